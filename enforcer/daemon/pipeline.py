"""Kernel events out: ring buffer -> decoded denials -> audit log and a
retained, sequenced stream that any number of subscribers read at their own pace.

Records are taken from the ring buffer in batches and given back to the kernel
only once they are in the audit log (enforcer.kernel.ringbuf): a daemon killed
at any point leaves what it had not written down to the next one. Subscribers
never block the drain: each keeps its own cursor into a bounded retention buffer.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from enforcer.daemon.audit import AUDIT_LOGGER
from enforcer.daemon.store import PolicyStore, TagInfo
from enforcer.kernel import layout
from enforcer.kernel.devices import device_name
from enforcer.kernel.events import (
    DNS_DENIED,
    DNS_NOT_ALLOWED,
    DeviceDetail,
    DnsDetail,
    EscalationDetail,
    EscapeDetail,
    ExecDetail,
    KernelDenial,
    NetDetail,
    SyscallDetail,
    decode,
)
from enforcer.kernel.ringbuf import RingRecord
from enforcer.kernel.syscall_rules import syscall_name
from enforcer.kinds import BY_PROTO, KINDS, PROTOCOL_NUMBERS
from enforcer.policy.syscalls import syscall_table
from enforcer.v1 import enforcer_pb2 as pb

log = structlog.get_logger("enforcer.pipeline")
audit = structlog.get_logger(AUDIT_LOGGER)

_KINDS = {layout.kind_number(kind.kernel_macro): kind.proto for kind in KINDS}  # the kernel's -> the wire's
_ESCAPE_HOW = {layout.ESCAPE_MOVE: "cgroup.procs", layout.ESCAPE_CLONE: "clone_into_cgroup",
               layout.ESCAPE_SIGNAL: "signal_to_daemon"}
_ESCALATION_ACTIONS = {
    layout.ESCALATE_QUARANTINE: pb.ESCALATION_ACTION_QUARANTINE,
    layout.ESCALATE_FREEZE: pb.ESCALATION_ACTION_FREEZE,
    layout.ESCALATE_KILL: pb.ESCALATION_ACTION_KILL,
}
ESCALATION_POLL_S = 0.25
# Records taken from the ring buffer per poll: bounds the drain's memory and
# latency when the kernel produces faster than the daemon can publish (the
# excess is counted by the kernel as lost, never silently dropped).
MAX_BATCH = 4096
PUBLISH_CHUNK = 512
# Denials decided in userspace (the DNS forwarder) waiting for the drain thread,
# which alone numbers events; beyond this they are counted lost.
MAX_SUBMITTED = 65536
Drivers = dict[int, str]  # device majors -> driver names
Escape = tuple[str, str]  # for an escape: who killed what left, and where it went
_NR_BPF = syscall_table()["bpf"]
_NR32_BPF = 357  # i386: a 32-bit call killed at entry carries it


def _is_bpf(detail: SyscallDetail) -> bool:
    i386 = detail.compat and not detail.lsm
    return detail.number == (_NR32_BPF if i386 else _NR_BPF)


_DNS_REASONS = {DNS_NOT_ALLOWED: pb.DNS_REASON_NOT_ALLOWED, DNS_DENIED: pb.DNS_REASON_DENIED}


class EventSource(Protocol):
    identity: str  # which ring buffer: its positions mean nothing for another

    def read(self, limit: int) -> list[RingRecord]: ...
    def commit(self, before: int | None = None) -> None: ...
    def wait(self, timeout_ms: int) -> None: ...


class Reactions(Protocol):
    """What the daemon does on what the kernel reports (enforcer.daemon.reactions)."""

    def on_escalation(self, denial: KernelDenial) -> None: ...
    def lost_escalations(self) -> list[KernelDenial]: ...
    def on_unserved_dns(self, denial: KernelDenial) -> None: ...
    def on_escape(self, denial: KernelDenial) -> tuple[str, str]: ...
    def on_bpf_call(self) -> None: ...
_REASONS = {
    layout.REASON_NOT_ALLOWED: pb.EXEC_REASON_NOT_ALLOWED,
    layout.REASON_DENIED: pb.EXEC_REASON_DENIED,
    layout.REASON_UNNAMED: pb.EXEC_REASON_UNNAMED,
    layout.REASON_UNRESOLVED: pb.EXEC_REASON_UNRESOLVED,
    layout.REASON_SCRIPT: pb.EXEC_REASON_SCRIPT,
}
# BPF_DEVCG_ACC_MKNOD, _READ, _WRITE
_ACCESS_LETTERS = ((2, "r"), (4, "w"), (1, "m"))
_ACTIONS = {layout.ACTION_REFUSED: pb.ACTION_REFUSED, layout.ACTION_AUDITED: pb.ACTION_AUDITED}
_KIND_NAMES = {kind: pb.DenialKind.Name(number) for kind, number in _KINDS.items()}
_ACTION_NAMES = {action: pb.Action.Name(number) for action, number in _ACTIONS.items()}
_PROTOCOLS = {number: wire for wire, number in PROTOCOL_NUMBERS.items()}  # the kernel's -> the wire's


def boot_to_unix_offset_ns() -> int:
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class DenialPipeline:
    def __init__(self, source: EventSource, store: PolicyStore, retention: int = 65536,
                 reactions: Reactions | None = None, next_seq: int = 1,
                 recorded_through: int = -1, device_drivers: dict[int, str] | None = None) -> None:
        """``next_seq`` and ``recorded_through`` (the last position of this
        ring buffer in the audit log) carry on from an earlier daemon's audit log."""
        self._source = source
        self._reactions = reactions
        self._last_escalation_poll = 0.0
        self._store = store
        self._recorded_through = recorded_through
        self._drivers = device_drivers or {}  # GPU majors -> driver, to name a device in its denials
        self._retained: deque[pb.DenialEvent] = deque(maxlen=retention)
        self._next_seq = next_seq
        self._lag_ns = 0
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="denial-drain", daemon=True)
        self._offset_ns = boot_to_unix_offset_ns()
        self._submitted: queue.Queue[KernelDenial] = queue.Queue(MAX_SUBMITTED)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def submit_dns(self, sandbox: str, slot: int, detail: DnsDetail, action: int) -> bool:
        """A denial the DNS forwarder decided; False if it could not be queued.
        It carries the sandbox's tag of this moment, as the kernel's events do."""
        record = self._store.find(sandbox)
        denial = KernelDenial(time.clock_gettime_ns(time.CLOCK_BOOTTIME), 0, record.generation if record else 0,
                              record.tag if record else 0, slot, 0, 0, "", layout.KIND_DNS, action, detail)
        try:
            self._submitted.put_nowait(denial)
        except queue.Full:
            return False
        return True

    def _publish_submitted(self) -> None:
        denials: list[KernelDenial] = []
        while len(denials) < PUBLISH_CHUNK:
            try:
                denials.append(self._submitted.get_nowait())
            except queue.Empty:
                break
        if denials:
            self._publish(denials)

    def _drain(self) -> None:
        while not self._stopping.is_set():
            try:
                self._publish_submitted()
            except Exception:
                log.exception("dns_denials_publish_failed")
            try:
                records = self._source.read(MAX_BATCH)
                if not records:
                    self._source.wait(100)
                    continue
                if records[0].position <= self._recorded_through:
                    # An earlier daemon wrote these down and was stopped before giving them back.
                    records = [r for r in records if r.position > self._recorded_through]
                    if not records:
                        self._source.commit()
                        continue
                # In chunks, each given back to the kernel once recorded: the ring
                # buffer's room is not held for a whole batch, nor its first events.
                for start in range(0, len(records), PUBLISH_CHUNK):
                    chunk = records[start:start + PUBLISH_CHUNK]
                    self._publish([decode(r.data) for r in chunk], [r.position for r in chunk])
                    following = start + PUBLISH_CHUNK
                    self._source.commit(records[following].position if following < len(records) else None)
            except Exception:
                log.exception("ring_buffer_read_failed")
                time.sleep(0.1)
                continue
            if self._reactions and time.monotonic() - self._last_escalation_poll >= ESCALATION_POLL_S:
                self._last_escalation_poll = time.monotonic()
                try:
                    lost = self._reactions.lost_escalations()
                except Exception:
                    log.exception("escalation_poll_failed")
                    lost = []
                if lost:
                    self._publish(lost)
        try:
            while not self._submitted.empty():  # what the forwarder reported before it stopped
                self._publish_submitted()
        except Exception:
            log.exception("dns_denials_publish_failed")

    def _publish(self, denials: list[KernelDenial], positions: list[int] | None = None) -> None:
        # Once per event, for the stream and the log.
        infos = [self._store.event_info(d.tag, d.slot, d.cgroup_id) for d in denials]
        events = []
        unserved_dns: dict[tuple[int, int], KernelDenial] = {}  # one per process and batch, not per refusal
        bpf_called = False  # checked once per batch, not per refusal
        for denial, info in zip(denials, infos, strict=True):
            if denial.kind == layout.KIND_ESCALATION and self._reactions:
                try:
                    self._reactions.on_escalation(denial)
                except Exception:
                    log.exception("escalation_failed")
            elif (isinstance(denial.detail, NetDetail) and denial.detail.port == layout.DNS_PORT
                  and denial.kind != layout.KIND_SOCKET):
                unserved_dns.setdefault((denial.slot, denial.tgid), denial)
            elif isinstance(denial.detail, SyscallDetail) and _is_bpf(denial.detail):
                bpf_called = True
            escape = ("", "")
            if denial.kind == layout.KIND_ESCAPE and self._reactions:
                try:
                    escape = self._reactions.on_escape(denial)
                except Exception:
                    log.exception("escape_containment_failed")
            events.append(self._to_proto(denial, info, escape))
        if self._reactions:
            for denial in unserved_dns.values():
                self._reactions.on_unserved_dns(denial)
            if bpf_called:
                try:
                    self._reactions.on_bpf_call()
                except Exception:
                    log.exception("reattach_failed")
        # Only this thread assigns sequence numbers. The audit log gets the batch
        # first: an event a subscriber sees is already recorded.
        for seq, event in enumerate(events, self._next_seq):
            event.seq = seq
        ring = self._source.identity if positions else ""  # denials the forwarder decided have no ring
        for denial, info, event, position in zip(denials, infos, events, positions or [-1] * len(events),
                                                 strict=True):
            detail = denial.detail
            if isinstance(detail, NetDetail) and denial.kind != layout.KIND_SOCKET:
                # The flood case, from the decoded tuple (reading the proto back costs more).
                audit.info("denial", seq=event.seq, sandbox=event.sandbox, labels=info.label_map if info else {},
                           kind=_KIND_NAMES[denial.kind], action=_ACTION_NAMES.get(denial.action, ""),
                           pid=denial.tgid, comm=denial.comm, address=detail.address, port=detail.port,
                           protocol=detail.protocol, time_unix_ns=event.time_unix_ns, ring=ring, ring_pos=position)
            else:
                audit.info("denial", **_audit_fields(event), ring=ring, ring_pos=position)
        with self._cond:
            self._retained.extend(events)
            self._next_seq += len(events)
            self._cond.notify_all()
        if events:
            self._lag_ns = time.time_ns() - events[-1].time_unix_ns

    @property
    def lag_seconds(self) -> float:
        """From the kernel's denial to its publication, for the latest batch."""
        return max(0, self._lag_ns) / 1e9

    def _to_proto(self, denial: KernelDenial, info: TagInfo | None,
                  escape: tuple[str, str] = ("", "")) -> pb.DenialEvent:
        """``escape``: for an escape, who killed what left and where it went."""
        # One constructor call per message: about half the cost of setting fields one by one.
        detail = denial.detail
        return pb.DenialEvent(
            sandbox=info.sandbox if info else "",
            labels=info.label_map if info else None,
            kind=_KINDS.get(denial.kind, pb.DENIAL_KIND_UNSPECIFIED),
            action=_ACTIONS.get(denial.action, pb.ACTION_UNSPECIFIED),
            time_unix_ns=denial.boot_ns + self._offset_ns,
            process=pb.Process(pid=denial.tgid, tid=denial.tid, comm=denial.comm, cgroup_id=denial.cgroup_id,
                               ppid=detail.ppid if isinstance(detail, ExecDetail) else 0),
            **_detail_fields(denial.kind, detail, self._drivers, escape),
        )

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def first_retained_seq(self) -> int:
        with self._cond:
            return self._next_seq - len(self._retained)

    def read(self, cursor: int, timeout: float, limit: int = 1000) -> tuple[list[pb.DenialEvent], int, int]:
        """Up to ``limit`` events with seq >= cursor (waiting up to ``timeout`` for
        one), the cursor after them, and how many events before them fell out of
        retention (a gap the caller must report)."""
        with self._cond:
            if cursor >= self._next_seq and timeout > 0 and not self._stopping.is_set():
                self._cond.wait(timeout)
            first = self._next_seq - len(self._retained)
            missed = max(0, first - cursor)
            start = max(cursor, first)
            stop = min(self._next_seq, start + limit)
            events = list(itertools.islice(self._retained, start - first, stop - first))
            return events, max(stop, cursor), missed


def _network_detail(kind: int, detail: NetDetail, _drivers: Drivers, _escape: Escape) -> dict[str, Any]:
    if kind == layout.KIND_SOCKET:
        return {"socket": pb.SocketInfo(family=detail.family, type=detail.sock_type, protocol=detail.protocol)}
    return {"destination": pb.Destination(address=detail.address, port=detail.port,
                                          protocol=_PROTOCOLS.get(detail.protocol, pb.PROTOCOL_UNSPECIFIED))}


def _exec_detail(_kind: int, detail: ExecDetail, _drivers: Drivers, _escape: Escape) -> dict[str, Any]:
    return {"exec": pb.ExecInfo(path=detail.path, argv=detail.argv, argv_truncated=detail.argv_truncated,
                                reason=_REASONS.get(detail.reason, pb.EXEC_REASON_UNSPECIFIED),
                                script=detail.script, device=detail.dev, inode=detail.ino)}


def _escalation_detail(_kind: int, detail: EscalationDetail, _drivers: Drivers, _escape: Escape) -> dict[str, Any]:
    return {"escalation": pb.EscalationInfo(
        action=_ESCALATION_ACTIONS.get(detail.action, pb.ESCALATION_ACTION_UNSPECIFIED), after=detail.after,
        within_seconds=detail.within_ns / 1e9, acted=detail.acted, denials=detail.fired_at)}


def _device_detail(_kind: int, detail: DeviceDetail, drivers: Drivers, escape: Escape) -> dict[str, Any]:
    driver, name = device_name(detail.major, detail.minor, drivers)
    return {"device": pb.DeviceInfo(major=detail.major, minor=detail.minor,
                                    access="".join(letter for bit, letter in _ACCESS_LETTERS if detail.access & bit),
                                    driver=driver, name=name)}


def _escape_detail(_kind: int, detail: EscapeDetail, drivers: Drivers, escape: Escape) -> dict[str, Any]:
    killed_by, path = escape  # who killed what left, and where it went
    return {"escape": pb.EscapeInfo(moved_pid=detail.moved_tgid, cgroup_id=detail.dst_cgroup_id, cgroup_path=path,
                                    how=_ESCAPE_HOW.get(detail.how, ""), moved_killed_by=killed_by,
                                    writer_killed=detail.writer_killed, signal=detail.signal,
                                    refused_by_lsm=detail.lsm)}


def _syscall_detail(_kind: int, detail: SyscallDetail, _drivers: Drivers, _escape: Escape) -> dict[str, Any]:
    i386_number = detail.compat and not detail.lsm  # not a number of this architecture's table
    return {"syscall": pb.SyscallInfo(name="" if i386_number else syscall_name(detail.number),
                                      number=detail.number, args=detail.args, refused_by_lsm=detail.lsm,
                                      compat=detail.compat)}


def _dns_detail(_kind: int, detail: DnsDetail, _drivers: Drivers, _escape: Escape) -> dict[str, Any]:
    return {"dns": pb.DnsInfo(name=detail.name, query_type=detail.query_type,
                              reason=_DNS_REASONS.get(detail.reason, pb.DNS_REASON_UNSPECIFIED),
                              transport=_PROTOCOLS.get(detail.transport, pb.PROTOCOL_UNSPECIFIED))}


# The kernel's decoded detail -> the DenialEvent field it fills (enforcer.kinds names the field).
_DETAIL_BUILDERS: dict[type, Callable[[int, Any, Drivers, Escape], dict[str, Any]]] = {
    NetDetail: _network_detail, ExecDetail: _exec_detail, EscalationDetail: _escalation_detail,
    DeviceDetail: _device_detail, EscapeDetail: _escape_detail, SyscallDetail: _syscall_detail,
    DnsDetail: _dns_detail,
}


def _detail_fields(kind: int, detail: object, drivers: dict[int, str],
                   escape: tuple[str, str] = ("", "")) -> dict[str, Any]:
    """The kind-specific part of a DenialEvent, as constructor arguments."""
    build = _DETAIL_BUILDERS.get(type(detail))
    return build(kind, detail, drivers, escape) if build else {}


def _audit_fields(event: pb.DenialEvent) -> dict[str, object]:
    """One flat audit record per denial, with the fields of its kind."""
    fields: dict[str, object] = {
        "seq": event.seq,
        "sandbox": event.sandbox,
        "labels": dict(event.labels),
        "kind": pb.DenialKind.Name(event.kind),
        "action": pb.Action.Name(event.action),
        "pid": event.process.pid,
        "comm": event.process.comm,
        "time_unix_ns": event.time_unix_ns,
    }
    fields.update(BY_PROTO[event.kind].audit(event))
    return fields


def matches(event: pb.DenialEvent, sandboxes: set[str], labels: dict[str, str]) -> bool:
    if sandboxes and event.sandbox not in sandboxes:
        return False
    return all(event.labels.get(k) == v for k, v in labels.items())
