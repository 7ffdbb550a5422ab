"""What the daemon does on what the kernel reports: carry out an escalation
(and find one whose event the ring buffer lost), kill what escaped when the
kernel could not, listen in a namespace a query came from, put back programs a
refused bpf() may have detached, and pin again what was unlinked. The denial
pipeline calls these; Enforcement owns the state they act on and shares its lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from enforcer.cgroupfs import write_control
from enforcer.daemon import escapes
from enforcer.daemon.dns import DnsForwarder
from enforcer.daemon.store import PolicyStore, SandboxRecord
from enforcer.kernel import layout
from enforcer.kernel.events import EscalationDetail, EscapeDetail, KernelDenial
from enforcer.kernel.guard import SandboxGuard
from enforcer.policy import EscalationAction, Mode

ESCALATE_CODES = {
    EscalationAction.QUARANTINE: layout.ESCALATE_QUARANTINE,
    EscalationAction.FREEZE: layout.ESCALATE_FREEZE,
    EscalationAction.KILL: layout.ESCALATE_KILL,
}
# A fired escalation whose event has not arrived after this long was lost with a
# full ring buffer: act on it from the map instead.
ESCALATION_EVENT_GRACE_NS = 1_000_000_000
ATTACHMENT_CHECK_S = 0.2  # at most this often on refused bpf() calls (each queries every guarded cgroup)

log = structlog.get_logger("enforcer.enforcement")


class KernelReactions:
    def __init__(self, guard: SandboxGuard, store: PolicyStore, lock: threading.Lock, dns: DnsForwarder,
                 mount: Path, save: Callable[[SandboxRecord], None]) -> None:
        self._guard = guard
        self._store = store
        self._lock = lock
        self._dns = dns
        self._mount = mount
        self._save = save
        self._attachments_checked = 0.0  # monotonic time of the last check
        self._bpf_call_unchecked = False

    def on_bpf_call(self) -> None:
        """A sandbox called bpf() and was refused. Without BPF-LSM the call ran
        before its caller died, and a detach racing it from another thread
        could have got through: put back whatever is missing. A check queries
        every guarded cgroup, so a flood of refused calls gets one check per
        ATTACHMENT_CHECK_S; the rest wait for keep_pins, within a second."""
        self._bpf_call_unchecked = True
        if time.monotonic() - self._attachments_checked >= ATTACHMENT_CHECK_S:
            with self._lock:
                self._check_attachments()

    def keep_pins(self) -> None:
        """Each second: pin again what was unlinked from bpffs, and check the
        attachments a refused bpf() call left unchecked. Skipped while an apply
        holds the lock (the caller comes back in a second)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            restored = self._guard.restore_pins()
            if self._bpf_call_unchecked:
                self._check_attachments()
        finally:
            self._lock.release()
        if restored:
            log.error("pins_restored", pins=[str(p) for p in restored],
                      note="someone unlinked them; without a pin a link ends with the daemon")

    def _check_attachments(self) -> None:
        """Under the lock."""
        self._bpf_call_unchecked = False
        self._attachments_checked = time.monotonic()
        restored = self._guard.restore_attachments()
        if restored:
            log.error("programs_reattached", programs=[f"{name}@{cgroup_id}" for name, cgroup_id in restored],
                      note="a sandbox detached them with bpf() before it was stopped")

    def on_escape(self, denial: KernelDenial) -> tuple[str, str]:
        """The kernel reported a cgroup escape: kill what left if the kernel
        could not; (who killed it, where it went)."""
        detail = denial.detail
        assert isinstance(detail, EscapeDetail)
        with self._lock:
            record = self._store.by_slot(denial.slot)
        killed_by = escapes.contain(detail, denial.action, record.cgroup.path if record else None, self._mount)
        return killed_by, escapes.cgroup_path_of(detail.dst_cgroup_id, self._mount)

    def on_escalation(self, denial: KernelDenial) -> None:
        """The kernel reported an escalation: carry out what only userspace can."""
        detail = denial.detail
        assert isinstance(detail, EscalationDetail)
        with self._lock:
            record = self._store.by_slot(denial.slot)
            if record is None or record.escalation_handled == detail.fired_at or record.policy.escalate is None:
                return
            self._act(record, detail)

    def on_unserved_dns(self, denial: KernelDenial) -> None:
        """The kernel refused a port-53 call of a sandbox that resolves by name:
        its process is in a namespace with no forwarder yet. Listen there."""
        with self._lock:
            record = self._store.by_slot(denial.slot)
        if record is None or not record.policy.network.by_name or not denial.tgid:
            return
        try:
            self._dns.serve_namespace_of(record.policy.sandbox, denial.tgid)
        except Exception as exc:
            log.error("dns_forwarder_add_failed", sandbox=record.policy.sandbox, pid=denial.tgid, error=str(exc))

    def lost_escalations(self) -> list[KernelDenial]:
        """Escalations the kernel fired whose event never came (ring buffer full):
        act on them now, and return a stand-in event for each to report."""
        found = []
        now = time.monotonic_ns()
        with self._lock:
            for record in self._store.all():
                if record.policy.escalate is None:
                    continue
                fired = self._guard.maps.escalation_fired(record.slot)
                if not fired or fired == record.escalation_handled:
                    continue
                if not record.escalation_seen_ns:
                    record.escalation_seen_ns = now
                    continue
                if now - record.escalation_seen_ns < ESCALATION_EVENT_GRACE_NS:
                    continue
                escalate = record.policy.escalate
                acted = record.policy.mode is Mode.ENFORCE
                detail = EscalationDetail(fired, round(escalate.within * 1e9), escalate.after,
                                          ESCALATE_CODES[escalate.action], acted)
                self._act(record, detail)
                found.append(KernelDenial(time.clock_gettime_ns(time.CLOCK_BOOTTIME), record.cgroup.id,
                                          record.generation, record.tag, record.slot, 0, 0, "",
                                          layout.KIND_ESCALATION,
                                          layout.ACTION_REFUSED if acted else layout.ACTION_AUDITED, detail))
        return found

    def _act(self, record: SandboxRecord, detail: EscalationDetail) -> None:
        record.escalation_handled = detail.fired_at
        record.escalation_seen_ns = 0
        action = record.policy.escalate.action if record.policy.escalate else None
        if detail.acted and record.cgroup.still_exists():
            if action is EscalationAction.QUARANTINE:
                record.quarantined = True  # the kernel already refuses everything
            elif action is EscalationAction.FREEZE:
                write_control(record.cgroup, "cgroup.freeze", "1")
                record.frozen = True
            elif action is EscalationAction.KILL:
                write_control(record.cgroup, "cgroup.kill", "1")
        self._save(record)
        log.warning("escalation", sandbox=record.policy.sandbox, action=action.value if action else None,
                    acted=detail.acted, denials=detail.fired_at)
