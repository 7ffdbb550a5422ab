"""Decode the records the BPF programs put in the ring buffer."""

from __future__ import annotations

import ctypes
import socket
from typing import NamedTuple

from enforcer.kernel import layout

AF_INET = 2
AF_INET6 = 10
EVENT_SIZE = ctypes.sizeof(layout.Event)


class KernelDenial(NamedTuple):
    # A NamedTuple and inet_ntop: this runs once per event on the drain thread.
    boot_ns: int
    cgroup_id: int
    generation: int
    slot: int
    tgid: int
    tid: int
    comm: str
    kind: int
    action: int
    family: int
    sock_type: int
    port: int
    protocol: int
    address: str  # "" for socket events


def decode(raw: bytes) -> KernelDenial:
    ev = layout.Event.from_buffer_copy(raw.ljust(EVENT_SIZE, b"\0"))
    address = ""
    if ev.kind != layout.KIND_SOCKET and ev.family in (AF_INET, AF_INET6):
        addr = bytes(ev.addr)
        address = socket.inet_ntop(ev.family, addr[:4] if ev.family == AF_INET else addr)
    return KernelDenial(
        boot_ns=ev.boot_ns,
        cgroup_id=ev.cgroup_id,
        generation=ev.generation,
        slot=ev.slot,
        tgid=ev.tgid,
        tid=ev.tid,
        comm=ev.comm.decode("utf-8", "replace"),
        kind=ev.kind,
        action=ev.action,
        family=ev.family,
        sock_type=ev.sock_type,
        port=ev.port,
        protocol=ev.protocol,
        address=address,
    )
