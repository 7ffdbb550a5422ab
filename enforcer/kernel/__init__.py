"""The kernel layer: compile and attach the BPF programs, encode policies into
maps, decode the events the programs emit."""
