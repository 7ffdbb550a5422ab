"""Runs inside a sandbox (standard library only): makes one system call by
number with the given integer arguments and prints what it returned, as JSON.

    syscall_probe.py NAME [ARG...]     NAME: unshare, mkdir, bpf, perf_event_open, getpid, ...
    syscall_probe.py perf-sw               perf_event_open of a software counter on itself
    syscall_probe.py unshare-mount-tmpfs DIR
                                       in a mount namespace of its own, make its mounts private,
                                       then mount a tmpfs on DIR (the first mount call is judged)

Prints {"returned": R, "errno": E}; a process killed at the call prints nothing
(its exit status says SIGKILL).
"""

from __future__ import annotations

import ctypes
import json
import sys

NUMBERS = {"getpid": 39, "unshare": 272, "mkdir": 83, "bpf": 321, "perf_event_open": 298, "ptrace": 101,
           "mount": 165, "keyctl": 250, "io_uring_setup": 425}


CLONE_NEWNS = 0x00020000
PERF_TYPE_SOFTWARE, PERF_ATTR_SIZE_VER0 = 1, 64  # config 0: PERF_COUNT_SW_CPU_CLOCK
MS_REC, MS_PRIVATE = 0x4000, 0x40000


def main() -> None:
    name, args = sys.argv[1], [int(a, 0) if not a.startswith("/") else a.encode() for a in sys.argv[2:]]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if name == "perf-sw":  # a valid software counter on itself: the call gets past copying its attr
        attr = ctypes.create_string_buffer(PERF_ATTR_SIZE_VER0)
        ctypes.c_uint32.from_buffer(attr, 0).value = PERF_TYPE_SOFTWARE
        ctypes.c_uint32.from_buffer(attr, 4).value = PERF_ATTR_SIZE_VER0
        name, args = "perf_event_open", [attr, 0, -1, -1, 0]
    if name == "unshare-mount-tmpfs":  # mounts in a namespace that ends with this process
        if libc.syscall(NUMBERS["unshare"], CLONE_NEWNS) < 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        returned = libc.syscall(NUMBERS["mount"], None, b"/", None, MS_REC | MS_PRIVATE, None)
        if returned < 0:
            print(json.dumps({"returned": returned, "errno": ctypes.get_errno()}), flush=True)
            return
        name, args = "mount", [b"none", args[0], b"tmpfs", 0, None]
    returned = libc.syscall(NUMBERS[name], *args)
    print(json.dumps({"returned": returned, "errno": ctypes.get_errno() if returned < 0 else 0}), flush=True)


if __name__ == "__main__":
    main()
