"""Apply and remove policies: the model goes in, kernel maps come out.

Apply is all-or-nothing. Every step that can fail (target resolution, encoding,
capacity, map writes, attach) happens before the single map update that switches
the sandbox to its new rules; a failure before that point undoes what was
written and leaves the kernel and the store exactly as they were.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from dataclasses import dataclass

import structlog

from enforcer.cgroupfs import Cgroup, cgroup2_mount, resolve_target
from enforcer.daemon.store import ApplyConflict, CapacityExhausted, PolicyStore, SandboxRecord, now_ns
from enforcer.kernel import encode, exec_rules, layout
from enforcer.kernel.guard import CounterTotals, SandboxGuard, SandboxState
from enforcer.policy import Mode, Policy, Verdict

log = structlog.get_logger("enforcer.enforcement")


@dataclass(frozen=True)
class ApplyResult:
    record: SandboxRecord
    replaced: bool


class Enforcement:
    def __init__(self, guard: SandboxGuard) -> None:
        self._guard = guard
        self._store = PolicyStore(layout.MAX_SANDBOXES)
        self._lock = threading.Lock()
        self._mount = cgroup2_mount()
        self._retired: queue.Queue[dict[str, list[bytes]]] = queue.Queue()
        threading.Thread(target=self._delete_retired, name="rule-janitor", daemon=True).start()

    def _delete_retired(self) -> None:
        while True:
            keys = self._retired.get()
            try:
                self._guard.delete_rules(keys)
            except Exception:
                log.exception("retired_rules_delete_failed", count=sum(len(k) for k in keys.values()))
            finally:
                self._retired.task_done()

    def flush_retired(self) -> None:
        """Wait until replaced rule sets are deleted (shutdown, tests)."""
        self._retired.join()

    @property
    def store(self) -> PolicyStore:
        return self._store

    @property
    def exec_mode(self) -> str:
        return self._guard.exec_mode

    @property
    def gpu_majors(self) -> list[int]:
        return list(self._guard.gpu_majors)

    def apply(self, policy: Policy) -> ApplyResult:
        started = time.perf_counter()
        cgroup = resolve_target(policy.target, self._mount)
        # Both may refuse the policy: before any change.
        compiled = encode.compile_prefixes(policy.network)
        compiled_exec = exec_rules.compile_exec(policy.exec) if policy.exec is not None else None
        with self._lock:
            self._place(policy, cgroup)
            previous = self._store.find(policy.sandbox)
            slot = previous.slot if previous else self._take_slot()
            generation = self._store.new_generation()
            tag = self._store.new_tag()
            self._store.note_tag(tag, policy.sandbox, policy.labels)
            entries = {layout.MAP_RULES: encode.pack_entries(compiled, generation)}
            if compiled_exec is not None:
                entries.update(exec_rules.pack_exec(compiled_exec, generation))
            quarantined = previous.quarantined if previous else False  # a new policy does not lift a quarantine
            state = _sandbox_state(policy, generation, slot, tag, quarantined)
            keys = {name: [key for key, _ in map_entries] for name, map_entries in entries.items()}
            try:
                self._guard.write_rules(entries)
                if previous is None:
                    self._guard.reset_slot(slot)
                self._guard.set_sandbox(cgroup, state)  # the switch
            except Exception:
                self._guard.delete_rules(keys)
                if previous is None:
                    self._store.release_slot(slot)
                raise
            record = SandboxRecord(policy, cgroup, generation, slot, tag, keys, now_ns(), quarantined)
            if previous is not None:  # the same slot: its counters and their baseline go on
                record.frozen = previous.frozen
                record.counter_base, record.counters_since_ns = previous.counter_base, previous.counters_since_ns
            else:
                record.counters_since_ns = record.applied_unix_ns
            self._store.put(record)
            if previous is None:
                try:
                    self._guard.guard(cgroup)
                except Exception:
                    self._store.pop(policy.sandbox)
                    self._guard.unguard(cgroup.id)
                    self._guard.delete_rules(keys)
                    self._store.release_slot(slot)
                    raise
            else:
                self._retired.put(previous.rule_keys)  # unreachable from now on; freed off the request path
        log.info(
            "policy_applied",
            sandbox=policy.sandbox,
            cgroup=str(cgroup.path),
            generation=generation,
            prefixes=len(entries[layout.MAP_RULES]),
            exec_entries=len(entries.get(layout.MAP_EXEC_IDS, ())),
            apply_ms=round((time.perf_counter() - started) * 1000, 2),
            mode=policy.mode.value,
            replaced=previous is not None,
        )
        return ApplyResult(record, replaced=previous is not None)

    def remove(self, sandbox: str) -> SandboxRecord:
        with self._lock:
            record = self._remove_locked(sandbox)
        log.info("policy_removed", sandbox=sandbox, cgroup=str(record.cgroup.path))
        return record

    def _remove_locked(self, sandbox: str) -> SandboxRecord:
        record = self._store.pop(sandbox)
        self._guard.unguard(record.cgroup.id)
        self._guard.delete_rules(record.rule_keys)
        self._store.release_slot(record.slot)
        return record

    # A sandbox whose cgroup was removed (its container ended) guards nothing any
    # more. It is dropped when it stands in the way of an apply (its id, its
    # cgroup path or a slot is wanted), not by checking every sandbox on every apply.

    def _place(self, policy: Policy, cgroup: Cgroup) -> None:
        while True:
            try:
                self._store.check_placement(policy, cgroup)
                return
            except ApplyConflict as conflict:
                if conflict.record.cgroup.still_exists():
                    raise
                self._drop_vanished(conflict.record)

    def _take_slot(self) -> int:
        try:
            return self._store.take_slot()
        except CapacityExhausted:
            for record in self._store.all():
                if not record.cgroup.still_exists():
                    self._drop_vanished(record)
            return self._store.take_slot()

    def _drop_vanished(self, record: SandboxRecord) -> None:
        self._remove_locked(record.policy.sandbox)
        log.info("vanished_sandbox_dropped", sandbox=record.policy.sandbox, cgroup=str(record.cgroup.path))

    def update_labels(self, sandbox: str, labels: tuple[tuple[str, str], ...]) -> SandboxRecord:
        """New labels for the sandbox's next denials: a new tag, one map update; the
        rules are untouched. Events already in flight keep the labels they had."""
        with self._lock:
            record = self._store.get(sandbox)
            tag = self._store.new_tag()
            self._store.note_tag(tag, sandbox, labels)
            self._write_state(record, tag=tag, policy=dataclasses.replace(record.policy, labels=labels))
        log.info("labels_updated", sandbox=sandbox, labels=dict(labels))
        return record

    def _write_state(self, record: SandboxRecord, *, tag: int | None = None, policy: Policy | None = None,
                     quarantined: bool | None = None) -> None:
        """Rewrite the sandbox's kernel entry (same rules), then the record to match."""
        policy = policy or record.policy
        tag = record.tag if tag is None else tag
        quarantined = record.quarantined if quarantined is None else quarantined
        self._guard.set_sandbox(record.cgroup, _sandbox_state(policy, record.generation, record.slot, tag, quarantined))
        record.policy, record.tag, record.quarantined = policy, tag, quarantined

    def counters(self, sandbox: str, reset: bool = False) -> tuple[CounterTotals, int]:
        """Exact counts since the apply or the last reset, and when that was. A reset
        never touches the kernel's counters: it moves the baseline, so a refusal
        counted between the read and the reset is not lost."""
        with self._lock:
            record = self._store.get(sandbox)
            totals = self._guard.read_counters(record.slot)
            counts, since = totals.minus(record.counter_base), record.counters_since_ns
            if reset:
                record.counter_base, record.counters_since_ns = totals, now_ns()
            return counts, since

    def remove_all(self) -> None:
        for record in self._store.all():
            self.remove(record.policy.sandbox)
        self.flush_retired()


def _verdict(verdict: Verdict) -> int:
    return layout.VERDICT_ALLOW if verdict is Verdict.ALLOW else layout.VERDICT_DENY


def _sandbox_state(policy: Policy, generation: int, slot: int, tag: int, quarantined: bool) -> SandboxState:
    return SandboxState(
        generation=generation,
        slot=slot,
        tag=tag,
        quarantined=quarantined,
        mode=layout.MODE_AUDIT if policy.mode is Mode.AUDIT else layout.MODE_ENFORCE,
        default_verdict=_verdict(policy.network.default),
        exec_default=layout.VERDICT_NONE if policy.exec is None else _verdict(policy.exec.default),
        gpu=_verdict(policy.devices.gpu),
    )
