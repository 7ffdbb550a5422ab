"""What the kernel holds for a daemon, read from its pins: entries per pinned
map. For tests and benchmarks that check nothing is left behind."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from enforcer.kernel.pins import PinDir

_KEY_BYTES = 4096  # larger than any key of ours (the exec path trie's is ~270 bytes)


def map_entries(pin_dir: Path) -> dict[str, int]:
    """Keys of each map the daemon pinned, by name (an array always has all its
    indices, a ring buffer none: constants, which compare equal)."""
    from bcc.libbcc import lib

    pins = PinDir(pin_dir)
    counts = {}
    for layout_name in pins.layouts():
        for pin in sorted(pins.maps_dir(layout_name).iterdir()):
            fd = pins.bpf.get(pin)
            try:
                key, next_key = ctypes.create_string_buffer(_KEY_BYTES), ctypes.create_string_buffer(_KEY_BYTES)
                found = 0
                if lib.bpf_get_first_key(fd, next_key, _KEY_BYTES) == 0:
                    found = 1
                    while True:
                        ctypes.memmove(key, next_key, _KEY_BYTES)
                        if lib.bpf_get_next_key(fd, key, next_key) != 0:
                            break
                        found += 1
                counts[pin.name] = found
            finally:
                os.close(fd)
    return counts
