"""The daemon: gRPC service, denial pipeline, and the wiring between the policy
model and the kernel layer."""
