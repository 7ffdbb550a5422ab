"""Network namespaces of sandboxes, and sockets made inside them.

A socket belongs to the network namespace of the thread that created it, for
its whole life. The DNS forwarder serves a sandbox with its own namespace by
creating its sockets from a short-lived thread that entered that namespace
(setns applies to the calling thread only), then using them from anywhere.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71  # asm-generic/socket.h, Linux 5.14
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    pass


@dataclass(frozen=True)
class NetworkNamespace:
    """An open handle on a namespace (``fd``), named by its inode."""

    inode: int
    fd: int

    def close(self) -> None:
        os.close(self.fd)


def own_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def open_namespace(pid: int | None = None) -> NetworkNamespace:
    """The namespace of ``pid`` (None: this process's)."""
    path = f"/proc/{pid}/ns/net" if pid is not None else "/proc/self/ns/net"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return NetworkNamespace(os.fstat(fd).st_ino, fd)


def open_named(name: str) -> NetworkNamespace:
    """A namespace made by `ip netns add` (or pyroute2), pinned under /run/netns."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    return NetworkNamespace(os.fstat(fd).st_ino, fd)


def namespaces_of(pids: list[int]) -> dict[int, int]:
    """inode -> one pid in it, for the namespaces these processes are in
    (processes that exit meanwhile are skipped)."""
    found: dict[int, int] = {}
    for pid in pids:
        try:
            found.setdefault(os.stat(f"/proc/{pid}/ns/net").st_ino, pid)
        except OSError:
            continue
    return found


def cgroup_pids(cgroup: Path) -> list[int]:
    """Every process in the cgroup and below it."""
    pids: list[int] = []
    for procs in [cgroup / "cgroup.procs", *cgroup.glob("**/cgroup.procs")]:
        try:
            pids += [int(line) for line in procs.read_text().split()]
        except (OSError, ValueError):
            continue
    return pids


def run_in(namespace: NetworkNamespace | None, fn: Callable[[], T]) -> T:
    """``fn()`` in a thread inside ``namespace`` (None: here)."""
    if namespace is None or namespace.inode == own_inode():
        return fn()
    result: list[T] = []
    failure: list[BaseException] = []

    def enter_and_run() -> None:
        try:
            enter(namespace)
            result.append(fn())
        except BaseException as exc:  # handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=enter_and_run, name=f"netns-{namespace.inode}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def enter(namespace: NetworkNamespace | None) -> None:
    """Move the calling thread into ``namespace`` for good (a thread that only
    serves that namespace)."""
    if namespace is None or namespace.inode == own_inode():
        return
    if _libc.setns(namespace.fd, CLONE_NEWNET) != 0:
        raise NetnsError(f"entering network namespace {namespace.inode} failed: {os.strerror(ctypes.get_errno())}")


def netns_cookie(sock: socket.socket) -> int:
    """The kernel's cookie for the socket's namespace: what bpf_get_netns_cookie()
    returns for sockets there."""
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
