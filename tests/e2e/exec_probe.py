"""Runs inside a sandbox (standard library only): tries one way of executing a
program and prints what became of it, and its own pid, as one JSON object.

    exec_probe.py spawn PATH [ARG...]   fork + execv
    exec_probe.py vfork PATH [ARG...]   posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK))
    exec_probe.py thread PATH [ARG...]  execv from a second thread (the whole process is replaced)
    exec_probe.py memfd SRC [ARG...]    copy SRC into a memfd, fexecve it
    exec_probe.py execveat SRC [ARG...] open SRC, execveat(fd, "", AT_EMPTY_PATH)

Outcomes: "exit:N", "killed" (SIGKILL: refused after the point of no return),
"eperm" (the exec failed with EPERM: refused by BPF-LSM), "error:NAME".
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import sys
import threading

EXIT_EPERM = 77
SYS_EXECVEAT = 322  # x86_64
AT_EMPTY_PATH = 0x1000


def outcome(status: int) -> str:
    if os.WIFSIGNALED(status):
        return "killed" if os.WTERMSIG(status) == signal.SIGKILL else f"signal:{os.WTERMSIG(status)}"
    code = os.WEXITSTATUS(status)
    return "eperm" if code == EXIT_EPERM else f"exit:{code}"


def exec_failed(exc: OSError) -> None:
    os._exit(EXIT_EPERM if exc.errno == errno.EPERM else 78)


def in_child(run: object) -> str:
    pid = os.fork()
    if pid == 0:
        try:
            run()  # type: ignore[operator]
        except OSError as exc:
            exec_failed(exc)
        os._exit(79)
    return outcome(os.waitpid(pid, 0)[1])


def memfd_of(src: str) -> int:
    fd = os.memfd_create("payload", 0)
    with open(src, "rb") as f:
        os.write(fd, f.read())
    return fd


def execveat(fd: int, argv: list[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    c_argv = (ctypes.c_char_p * (len(argv) + 1))(*[a.encode() for a in argv], None)
    c_envp = (ctypes.c_char_p * 1)(None)
    libc.syscall(SYS_EXECVEAT, fd, b"", c_argv, c_envp, AT_EMPTY_PATH)
    raise OSError(ctypes.get_errno(), "execveat failed")


def main() -> str:
    op, path, *args = sys.argv[1:]
    argv = [path, *args]
    if op == "spawn":
        return in_child(lambda: os.execv(path, argv))
    if op == "vfork":
        try:
            pid = os.posix_spawn(path, argv, {})
        except OSError as exc:
            return "eperm" if exc.errno == errno.EPERM else f"error:{errno.errorcode[exc.errno]}"
        return outcome(os.waitpid(pid, 0)[1])
    if op == "thread":
        failure: list[OSError] = []

        def replace_process() -> None:
            try:
                os.execv(path, argv)
            except OSError as exc:
                failure.append(exc)

        worker = threading.Thread(target=replace_process)
        worker.start()
        worker.join()
        return "eperm" if failure and failure[0].errno == errno.EPERM else f"error:{failure}"
    if op == "memfd":
        return in_child(lambda: os.execve(memfd_of(path), argv, {}))
    if op == "execveat":
        return in_child(lambda: execveat(os.open(path, os.O_RDONLY), argv))
    raise SystemExit(f"unknown op {op}")


if __name__ == "__main__":
    print(json.dumps({"outcome": main(), "pid": os.getpid()}), flush=True)
