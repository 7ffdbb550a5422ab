"""The denial pipeline between the ring buffer and subscribers: decoding,
attribution to the sandbox and its labels, sequence numbers, retention, and the
audit log event. The ring buffer is stood in for by a queue of the same bytes
the BPF programs write (struct enf_net_event, enf_exec_event, enf_device_event)."""

from __future__ import annotations

import ctypes
import ipaddress
import queue
import time

from structlog.testing import capture_logs

from enforcer.daemon.pipeline import DenialPipeline, matches
from enforcer.daemon.store import PolicyStore
from enforcer.kernel import layout
from enforcer.kernel.ringbuf import RingRecord
from enforcer.v1 import enforcer_pb2 as pb


class RingBufferStandIn:
    """read/commit/wait as enforcer.kernel.ringbuf.EventRing offers them."""

    identity = "test-ring"

    def __init__(self) -> None:
        self.pending: queue.Queue[bytes] = queue.Queue()
        self.position = 0
        self.committed = 0
        self._read_to = 0

    def read(self, limit: int) -> list[RingRecord]:
        records = []
        while len(records) < limit and not self.pending.empty():
            records.append(RingRecord(self._read_to, self.pending.get()))
            self._read_to += 1
        return records

    def commit(self, before: int | None = None) -> None:
        self.committed = self._read_to if before is None else before

    def wait(self, timeout_ms: int) -> None:
        deadline = time.monotonic() + timeout_ms / 1000
        while self.pending.empty() and time.monotonic() < deadline:
            time.sleep(0.005)


def head(generation: int, kind: int) -> layout.EventHead:
    return layout.EventHead(boot_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME), cgroup_id=77, generation=generation,
                            slot=0, tgid=1234, tid=1235, comm=b"xmrig", kind=kind, action=layout.ACTION_REFUSED,
                            tag=generation)


def raw_event(generation: int, port: int, address: str = "10.0.0.1", kind: int = layout.KIND_CONNECT) -> bytes:
    ev = layout.NetEvent(head=head(generation, kind), port=port, protocol=6)
    addr = ipaddress.ip_address(address)
    ev.family = 2 if addr.version == 4 else 10
    ctypes.memmove(ev.addr, addr.packed, len(addr.packed))
    return bytes(ev)


def make_pipeline(retention: int = 100) -> tuple[DenialPipeline, RingBufferStandIn, PolicyStore]:
    store = PolicyStore(4)
    store.note_tag(5, "rollout-17", (("episode", "17"), ("run", "ppo-7")))
    ring = RingBufferStandIn()
    pipeline = DenialPipeline(ring, store, retention=retention)  # type: ignore[arg-type]
    pipeline.start()
    return pipeline, ring, store


def read_all(pipeline: DenialPipeline, cursor: int, count: int) -> tuple[list[pb.DenialEvent], int]:
    deadline = time.monotonic() + 5
    events: list[pb.DenialEvent] = []
    missed = 0
    while len(events) < count and time.monotonic() < deadline:
        batch, cursor, gap = pipeline.read(cursor, timeout=0.2)
        events += batch
        missed += gap
    return events, missed


def test_events_are_decoded_attributed_and_sequenced():
    pipeline, ring, _ = make_pipeline()
    try:
        with capture_logs() as logs:
            ring.pending.put(raw_event(5, 3333, "10.0.0.33"))
            ring.pending.put(raw_event(5, 22, "2001:db8::22"))
            events, missed = read_all(pipeline, 1, 2)
    finally:
        pipeline.stop()
    assert missed == 0
    first, second = events
    assert (first.seq, second.seq) == (1, 2)
    assert first.sandbox == "rollout-17" and dict(first.labels) == {"run": "ppo-7", "episode": "17"}
    assert (first.destination.address, first.destination.port, first.destination.protocol) == (
        "10.0.0.33", 3333, pb.PROTOCOL_TCP)
    assert second.destination.address == "2001:db8::22"
    assert (first.process.pid, first.process.tid, first.process.comm) == (1234, 1235, "xmrig")
    assert abs(first.time_unix_ns - time.time_ns()) < 5e9
    denials = [entry for entry in logs if entry["event"] == "denial"]
    assert [(d["seq"], d["sandbox"], d["port"], d["kind"]) for d in denials] == [
        (1, "rollout-17", 3333, "DENIAL_KIND_CONNECT"), (2, "rollout-17", 22, "DENIAL_KIND_CONNECT")]
    assert [(d["ring"], d["ring_pos"]) for d in denials] == [("test-ring", 0), ("test-ring", 1)]


def test_records_an_earlier_daemon_wrote_down_are_skipped_and_given_back():
    store = PolicyStore(4)
    store.note_tag(5, "rollout-17", (("episode", "17"), ("run", "ppo-7")))
    ring = RingBufferStandIn()
    for port in (1, 2, 3):
        ring.pending.put(raw_event(5, port))
    pipeline = DenialPipeline(ring, store, recorded_through=2)  # type: ignore[arg-type]
    pipeline.start()
    try:
        deadline = time.monotonic() + 5
        while ring.committed < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ring.committed == 3  # the space is given back though nothing was new
        ring.pending.put(raw_event(5, 4))
        events, _ = read_all(pipeline, 1, 1)
    finally:
        pipeline.stop()
    assert [(e.seq, e.destination.port) for e in events] == [(1, 4)]


def test_exec_and_device_denials_carry_their_details():
    argv = b"/tmp/xmrig\0--donate-level\0" + b"1\0"
    exec_ev = layout.ExecEvent(head=head(5, layout.KIND_EXEC), ppid=42, reason=layout.REASON_NOT_ALLOWED, script=0,
                               argc=3, argv_len=len(argv), dev=(8 << 20) | 1, ino=1234, path=b"/tmp/xmrig")
    ctypes.memmove(ctypes.addressof(exec_ev) + layout.ExecEvent.argv.offset, argv, len(argv))  # NULs and all
    dev_ev = layout.DeviceEvent(head=head(5, layout.KIND_DEVICE), major=195, minor=0, access=2 | 4, dev_type=2)
    pipeline, ring, _ = make_pipeline()
    try:
        with capture_logs() as logs:
            ring.pending.put(bytes(exec_ev))
            ring.pending.put(bytes(dev_ev))
            events, _ = read_all(pipeline, 1, 2)
    finally:
        pipeline.stop()
    ex, dev = events
    assert ex.kind == pb.DENIAL_KIND_EXEC and ex.process.ppid == 42
    assert (ex.exec.path, list(ex.exec.argv), ex.exec.reason) == (
        "/tmp/xmrig", ["/tmp/xmrig", "--donate-level", "1"], pb.EXEC_REASON_NOT_ALLOWED)
    assert (ex.exec.device, ex.exec.inode, ex.exec.argv_truncated) == ((8 << 20) | 1, 1234, False)
    assert dev.kind == pb.DENIAL_KIND_DEVICE and (dev.device.major, dev.device.minor, dev.device.access) == (195, 0, "rw")
    denials = [entry for entry in logs if entry["event"] == "denial"]
    assert denials[0]["path"] == "/tmp/xmrig" and denials[0]["reason"] == "EXEC_REASON_NOT_ALLOWED"
    assert denials[1]["major"] == 195 and denials[1]["access"] == "rw"


def test_a_reader_behind_retention_is_told_how_many_it_missed():
    pipeline, ring, _ = make_pipeline(retention=3)
    try:
        for port in range(1, 6):
            ring.pending.put(raw_event(5, port))
        deadline = time.monotonic() + 5
        while pipeline.next_seq < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        events, next_cursor, missed = pipeline.read(1, timeout=0)
    finally:
        pipeline.stop()
    assert missed == 2
    assert [e.seq for e in events] == [3, 4, 5] and next_cursor == 6
    pipeline_events, cursor, _ = pipeline.read(3, timeout=0, limit=2)  # batches are bounded
    assert [e.seq for e in pipeline_events] == [3, 4] and cursor == 5


def test_unknown_generation_is_kept_unattributed_not_dropped():
    pipeline, ring, _ = make_pipeline()
    try:
        ring.pending.put(raw_event(999, 80))
        events, _ = read_all(pipeline, 1, 1)
    finally:
        pipeline.stop()
    assert len(events) == 1 and events[0].sandbox == ""


def test_filters():
    event = pb.DenialEvent(sandbox="a", labels={"episode": "3", "run": "x"})
    assert matches(event, set(), {})
    assert matches(event, {"a", "b"}, {"episode": "3"})
    assert not matches(event, {"b"}, {})
    assert not matches(event, set(), {"episode": "4"})


def test_dns_denials_from_the_forwarder_are_sequenced_with_the_kernels_and_flushed_at_stop():
    from pathlib import Path

    from enforcer.cgroupfs import Cgroup
    from enforcer.daemon.store import SandboxRecord
    from enforcer.kernel.events import DnsDetail
    from enforcer.policy import parse_policy

    pipeline, ring, store = make_pipeline()
    policy = parse_policy({"sandbox": "rollout-17", "target": {"pid": 1}, "labels": {"run": "ppo-7", "episode": "17"}})
    store.put(SandboxRecord(policy, Cgroup(Path("/sys/fs/cgroup/x"), 99, 1), generation=5, slot=0, tag=5))
    with capture_logs() as logs:
        ring.pending.put(raw_event(5, 22))
        assert pipeline.submit_dns("rollout-17", 0, DnsDetail("c2.evil.example", "TXT", 1, 17), layout.ACTION_REFUSED)
        events, _ = read_all(pipeline, 1, 2)
        assert pipeline.submit_dns("rollout-17", 0, DnsDetail("late.evil.example", "A", 2, 6), layout.ACTION_AUDITED)
        pipeline.stop()  # the one submitted last is published on the way out
    dns = next(e for e in events if e.kind == pb.DENIAL_KIND_DNS)
    assert dns.sandbox == "rollout-17" and dict(dns.labels) == {"run": "ppo-7", "episode": "17"}
    assert (dns.dns.name, dns.dns.query_type, dns.dns.reason, dns.dns.transport) == (
        "c2.evil.example", "TXT", pb.DNS_REASON_NOT_ALLOWED, pb.PROTOCOL_UDP)
    assert sorted(e.seq for e in events) == [1, 2]
    audited = [(d["seq"], d["name"], d["action"]) for d in logs if d["event"] == "denial" and d["kind"] == "DENIAL_KIND_DNS"]
    assert audited[-1] == (3, "late.evil.example", "ACTION_AUDITED") and len(audited) == 2
