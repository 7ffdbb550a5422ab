"""Decode the records the BPF programs put in the ring buffer."""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass

from enforcer.kernel import layout

AF_INET = 2
AF_INET6 = 10
EVENT_SIZE = ctypes.sizeof(layout.Event)


@dataclass(frozen=True)
class KernelDenial:
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
    addr = bytes(ev.addr)
    if ev.kind != layout.KIND_SOCKET:
        if ev.family == AF_INET:
            address = str(ipaddress.IPv4Address(addr[:4]))
        elif ev.family == AF_INET6:
            address = str(ipaddress.IPv6Address(addr))
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
