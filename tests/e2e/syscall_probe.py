"""Runs inside a sandbox (standard library only): makes one system call by
number with the given integer arguments and prints what it returned, as JSON.

    syscall_probe.py NAME [ARG...]     NAME: unshare, mkdir, bpf, perf_event_open, getpid, ...

Prints {"returned": R, "errno": E}; a process killed at the call prints nothing
(its exit status says SIGKILL).
"""

from __future__ import annotations

import ctypes
import json
import sys

NUMBERS = {"getpid": 39, "unshare": 272, "mkdir": 83, "bpf": 321, "perf_event_open": 298, "ptrace": 101,
           "mount": 165, "keyctl": 250, "io_uring_setup": 425}


def main() -> None:
    name, args = sys.argv[1], [int(a, 0) if not a.startswith("/") else a.encode() for a in sys.argv[2:]]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    returned = libc.syscall(NUMBERS[name], *args)
    print(json.dumps({"returned": returned, "errno": ctypes.get_errno() if returned < 0 else 0}), flush=True)


if __name__ == "__main__":
    main()
