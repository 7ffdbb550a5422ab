"""Ring buffer records decoded: the struct fast path for network events agrees
with the ctypes mirror of bpf/enforcer.h."""

from __future__ import annotations

import ctypes
import socket

from enforcer.kernel import layout
from enforcer.kernel.events import ExecDetail, NetDetail, decode


def test_network_fast_path_matches_the_mirror():
    ev = layout.NetEvent(head=layout.EventHead(boot_ns=11, cgroup_id=22, generation=3, slot=4, tgid=5, tid=6,
                                               comm=b"curl", kind=layout.KIND_CONNECT, action=layout.ACTION_AUDITED,
                                               tag=77),
                         family=10, sock_type=1, port=443, protocol=6)
    ctypes.memmove(ev.addr, socket.inet_pton(socket.AF_INET6, "2001:db8::7"), 16)
    denial = decode(bytes(ev))
    assert (denial.boot_ns, denial.cgroup_id, denial.generation, denial.tag, denial.slot, denial.tgid, denial.tid,
            denial.comm, denial.kind, denial.action) == (11, 22, 3, 77, 4, 5, 6, "curl", layout.KIND_CONNECT,
                                                         layout.ACTION_AUDITED)
    assert denial.detail == NetDetail(10, 1, 443, 6, "2001:db8::7")


def test_socket_events_have_no_address_and_exec_events_decode():
    ev = layout.NetEvent(head=layout.EventHead(kind=layout.KIND_SOCKET, tag=1), family=2, sock_type=3, protocol=1)
    assert decode(bytes(ev)).detail == NetDetail(2, 3, 0, 1, "")
    ex = layout.ExecEvent(head=layout.EventHead(kind=layout.KIND_EXEC, tag=1), ppid=9, reason=layout.REASON_DENIED,
                          argc=1, argv_len=3, path=b"/x")
    ctypes.memmove(ctypes.addressof(ex) + layout.ExecEvent.argv.offset, b"/x\0", 3)
    detail = decode(bytes(ex)).detail
    assert isinstance(detail, ExecDetail) and (detail.path, detail.argv, detail.ppid) == ("/x", ("/x",), 9)
