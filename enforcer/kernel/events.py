"""Decode the records the BPF programs put in the ring buffer.

Every record starts with struct enf_event_head; its kind says which struct it is.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from enforcer.kernel import layout

AF_INET = 2
AF_INET6 = 10
_HEAD_SIZE = ctypes.sizeof(layout.EventHead)
_KIND_OFFSET = layout.EventHead.kind.offset
_ARGV_OFFSET = layout.ExecEvent.argv.offset  # sliced from the raw bytes: a c_char field stops at the first NUL
_SIZES = {
    layout.KIND_CONNECT: ctypes.sizeof(layout.NetEvent),
    layout.KIND_SENDMSG: ctypes.sizeof(layout.NetEvent),
    layout.KIND_SOCKET: ctypes.sizeof(layout.NetEvent),
    layout.KIND_EXEC: ctypes.sizeof(layout.ExecEvent),
    layout.KIND_DEVICE: ctypes.sizeof(layout.DeviceEvent),
    layout.KIND_ESCALATION: ctypes.sizeof(layout.EscalationEvent),
    layout.KIND_SYSCALL: ctypes.sizeof(layout.SyscallEvent),
    layout.KIND_ESCAPE: ctypes.sizeof(layout.EscapeEvent),
}


# Network events are nearly all of a flood: decode them with one struct unpack
# (tests/unit/test_events.py checks this format against the ctypes mirror).
_NET_EVENT = struct.Struct("<QQIIII16sBB2xIBBHH2x16s")
assert _NET_EVENT.size == ctypes.sizeof(layout.NetEvent)
_NET_KINDS = (layout.KIND_CONNECT, layout.KIND_SENDMSG, layout.KIND_SOCKET)


class NetDetail(NamedTuple):
    family: int
    sock_type: int
    port: int
    protocol: int
    address: str  # "" for socket events


class ExecDetail(NamedTuple):
    ppid: int
    reason: int  # layout.REASON_*
    script: bool
    path: str
    argv: tuple[str, ...]
    argv_truncated: bool
    dev: int
    ino: int


class DeviceDetail(NamedTuple):
    major: int
    minor: int
    access: int    # BPF_DEVCG_ACC_* bits
    dev_type: int


class EscalationDetail(NamedTuple):
    fired_at: int    # the denial count that fired it
    within_ns: int
    after: int
    action: int      # layout.ESCALATE_*
    acted: bool      # False in audit mode


class SyscallDetail(NamedTuple):
    number: int              # this architecture's (a 32-bit call killed at entry: its i386 number)
    args: tuple[int, ...]    # the six argument registers, as passed
    lsm: bool = False        # refused with EPERM by a BPF-LSM hook (else the caller was killed)
    compat: bool = False     # a 32-bit call


class EscapeDetail(NamedTuple):
    moved_tgid: int
    dst_cgroup_id: int
    how: int               # layout.ESCAPE_*
    writer_killed: bool    # the kernel killed the writer (the head's process)
    moved_is_writer: bool  # ... which was the moved process itself
    lsm: bool = False      # a signal to the daemon refused by BPF-LSM (not delivered)
    signal: int = 0        # a signal to the daemon: which


DNS_NOT_ALLOWED = 1  # DnsDetail.reason: no allow rule names it
DNS_DENIED = 2       # a deny rule names it


class DnsDetail(NamedTuple):
    """Not from the kernel: the daemon's DNS forwarder refused a query."""

    name: str
    query_type: str  # A, AAAA, TXT, ... or TYPE<n>
    reason: int      # DNS_NOT_ALLOWED / DNS_DENIED
    transport: int   # IPPROTO_UDP / IPPROTO_TCP


Detail = NetDetail | ExecDetail | DeviceDetail | EscalationDetail | DnsDetail | SyscallDetail | EscapeDetail


class KernelDenial(NamedTuple):
    # NamedTuples and inet_ntop: this runs once per event on the drain thread.
    boot_ns: int
    cgroup_id: int
    generation: int
    tag: int
    slot: int
    tgid: int
    tid: int
    comm: str
    kind: int
    action: int
    detail: Detail | None


def _exec_detail(ev: layout.ExecEvent, raw: bytes) -> ExecDetail:
    argv_bytes = raw[_ARGV_OFFSET: _ARGV_OFFSET + min(ev.argv_len, layout.ARGV_BYTES)]
    args = tuple(a.decode("utf-8", "replace") for a in argv_bytes.split(b"\0")[: ev.argc])
    return ExecDetail(ev.ppid, ev.reason, bool(ev.script), ev.path.decode("utf-8", "replace"), args,
                      bool(ev.argv_truncated), ev.dev, ev.ino)


def _address(kind: int, family: int, addr: bytes) -> str:
    """The destination as text ("" for a socket creation, or a family with none)."""
    if kind == layout.KIND_SOCKET:
        return ""
    if family == AF_INET:
        return socket.inet_ntop(AF_INET, addr[:4])
    if family == AF_INET6:
        return socket.inet_ntop(AF_INET6, addr)
    return ""


def _net_detail(net: layout.NetEvent, _raw: bytes) -> NetDetail:
    return NetDetail(net.family, net.sock_type, net.port, net.protocol, _address(net.head.kind, net.family,
                                                                                 bytes(net.addr)))


# The kernel's kind -> its event struct and the detail decoded from it (a short
# network record takes this path too; a full one, the struct fast path below).
_DECODERS: dict[int, tuple[type[Any], Callable[[Any, bytes], Detail]]] = {
    layout.KIND_EXEC: (layout.ExecEvent, _exec_detail),
    layout.KIND_ESCALATION: (layout.EscalationEvent, lambda esc, _raw: EscalationDetail(
        esc.count, esc.within_ns, esc.after, esc.escalate_action, bool(esc.acted))),
    layout.KIND_SYSCALL: (layout.SyscallEvent, lambda call, _raw: SyscallDetail(
        call.nr, tuple(call.args), bool(call.lsm), bool(call.compat))),
    layout.KIND_ESCAPE: (layout.EscapeEvent, lambda esc, _raw: EscapeDetail(
        esc.moved_tgid, esc.dst_cgroup_id, esc.how, bool(esc.writer_killed), bool(esc.moved_is_writer),
        bool(esc.lsm), esc.signal)),
    layout.KIND_DEVICE: (layout.DeviceEvent, lambda dev, _raw: DeviceDetail(
        dev.major, dev.minor, dev.access, dev.dev_type)),
    **{kind: (layout.NetEvent, _net_detail) for kind in (layout.KIND_CONNECT, layout.KIND_SENDMSG,
                                                         layout.KIND_SOCKET)},
}


def decode(raw: bytes) -> KernelDenial:
    kind = raw[_KIND_OFFSET] if len(raw) > _KIND_OFFSET else 0
    if kind in _NET_KINDS and len(raw) >= _NET_EVENT.size:
        return _decode_net(raw)
    raw = raw.ljust(_SIZES.get(kind, _HEAD_SIZE), b"\0")
    detail: Detail | None = None
    decoder = _DECODERS.get(kind)
    if decoder is None:
        head = layout.EventHead.from_buffer_copy(raw)
    else:
        event_type, decode_detail = decoder
        event = event_type.from_buffer_copy(raw)
        detail, head = decode_detail(event, raw), event.head
    return KernelDenial(
        boot_ns=head.boot_ns,
        cgroup_id=head.cgroup_id,
        generation=head.generation,
        tag=head.tag,
        slot=head.slot,
        tgid=head.tgid,
        tid=head.tid,
        comm=head.comm.decode("utf-8", "replace"),
        kind=head.kind,
        action=head.action,
        detail=detail,
    )


def _decode_net(raw: bytes) -> KernelDenial:
    (boot_ns, cgroup_id, generation, slot, tgid, tid, comm, kind, action, tag,
     family, sock_type, port, protocol, addr) = _NET_EVENT.unpack_from(raw)
    return KernelDenial(boot_ns, cgroup_id, generation, tag, slot, tgid, tid,
                        comm.split(b"\0", 1)[0].decode("utf-8", "replace"), kind, action,
                        NetDetail(family, sock_type, port, protocol, _address(kind, family, addr)))
