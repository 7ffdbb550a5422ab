"""Runs inside a sandbox as root (standard library only): one way out of the
sandbox's cgroup, then prints what it did as JSON lines (flushed, so the test
reads them even when the process is killed right after).

    escape_probe.py move-self DEST     write its own pid into DEST/cgroup.procs
    escape_probe.py move-child DEST    fork a sleeping child, write the child's pid there
    escape_probe.py clone-into DEST    clone3(CLONE_INTO_CGROUP) a sleeping child into DEST
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time

SYS_CLONE3 = 435  # x86_64
CLONE_INTO_CGROUP = 0x200000000
SIGCHLD = 17


class CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls", "set_tid",
        "set_tid_size", "cgroup")]


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def move(pid: int, dest: str) -> None:
    with open(os.path.join(dest, "cgroup.procs"), "w") as procs:
        procs.write(str(pid))


def sleeping_child() -> int:
    pid = os.fork()
    if pid == 0:
        quiet()
        time.sleep(60)
        os._exit(0)
    return pid


def quiet() -> None:
    """A child lets go of the output pipes: the test reads until they close."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def clone_into(dest: str) -> int:
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    args = CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=SIGCHLD, cgroup=fd)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pid = libc.syscall(SYS_CLONE3, ctypes.byref(args), ctypes.sizeof(args))
    if pid == 0:
        quiet()
        time.sleep(60)
        os._exit(0)
    if pid < 0:
        raise OSError(ctypes.get_errno(), "clone3")
    return int(pid)


def main() -> None:
    how, dest = sys.argv[1], sys.argv[2]
    if how == "move-self":
        say(pid=os.getpid())
        move(os.getpid(), dest)
        say(outcome="moved")
    elif how == "move-child":
        child = sleeping_child()
        say(pid=os.getpid(), child=child)
        move(child, dest)
        say(outcome="moved")
    elif how == "clone-into":
        say(pid=os.getpid())
        child = clone_into(dest)
        say(child=child, outcome="cloned")
    time.sleep(0.5)  # a kill at the move lands before this returns


if __name__ == "__main__":
    main()
