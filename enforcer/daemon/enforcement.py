"""Apply and remove policies: the model goes in, kernel maps come out.

Apply is all-or-nothing. Every step that can fail (target resolution, encoding,
capacity, map writes, attach) happens before the single map update that switches
the sandbox to its new rules; a failure before that point undoes what was
written and leaves the kernel and the store exactly as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from enforcer.cgroupfs import (
    Cgroup,
    cgroup2_mount,
    create_target_cgroup,
    remove_created,
    resolve_target,
    write_control,
)
from enforcer.daemon import exec_roots
from enforcer.daemon.dns import DnsChange, DnsForwarder
from enforcer.daemon.reactions import ESCALATE_CODES, KernelReactions
from enforcer.daemon.state import StateDir
from enforcer.daemon.store import (
    ApplyConflict,
    CapacityExhausted,
    Containers,
    PolicyStore,
    SandboxRecord,
    now_ns,
)
from enforcer.kernel import encode, exec_rules, layout, syscall_rules
from enforcer.kernel.guard import KernelError, SandboxGuard
from enforcer.kernel.maps import CounterTotals, SandboxState
from enforcer.policy import Mode, Policy, PolicyError, Verdict, parse_labels
from enforcer.wire import policy_wire

log = structlog.get_logger("enforcer.enforcement")


class CallerGone(RuntimeError):
    pass


class _ContainersChanged(Exception):
    """The sandbox changed while an apply compiled (a container added or removed,
    a new policy or labels): compile again from what it is now."""


ContainersChange = Callable[[Containers], Containers]


@dataclass(frozen=True)
class KernelStatus:
    programs: list[tuple[str, str, int, int]]  # name, hook, attached, expected
    events_lost: int
    events_unattributed: int
    processes_untracked: int  # sandboxed processes the escape programs had no room for
    build: str
    map_layout: str
    pin_dir: str
    state_dir: str
    taken_over: bool
    dns_forwarders: int
    syscalls: list[tuple[str, str]]  # refused syscall, how this kernel refuses it (eperm, kill, none)


@dataclass(frozen=True)
class ApplyResult:
    record: SandboxRecord
    replaced: bool


class Enforcement:
    def __init__(self, guard: SandboxGuard, state: StateDir | None = None, events_per_sec: int = 2000) -> None:
        self._guard = guard
        self.dns = DnsForwarder(guard, events_per_sec)
        self._state = state
        self._store = PolicyStore(layout.MAX_SANDBOXES)
        self._lock = threading.Lock()
        self._mount = cgroup2_mount()
        self._retired: queue.Queue[dict[str, list[bytes]]] = queue.Queue()
        threading.Thread(target=self._delete_retired, name="rule-janitor", daemon=True).start()
        self.reactions = KernelReactions(guard, self._store, self._lock, self.dns, self._mount, self._save)

    def _delete_retired(self) -> None:
        while True:
            keys = self._retired.get()
            try:
                self._guard.maps.delete_rules(keys)
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

    def raw_counters(self) -> list[tuple[str, CounterTotals]]:
        """Each sandbox's kernel counters since its apply (stats resets aside)."""
        with self._lock:
            return [(r.policy.sandbox, self._guard.maps.read_counters(r.slot)) for r in self._store.all()]

    def kernel_status(self) -> KernelStatus:
        with self._lock:  # the attached cgroups do not change under the query
            programs = self._guard.program_status()
            syscalls = self._guard.syscalls.refusals(*self._refused_syscalls())
        return KernelStatus(
            programs=programs,
            events_lost=self._guard.maps.read_global(layout.GLOBAL_LOST),
            events_unattributed=self._guard.maps.read_global(layout.GLOBAL_UNATTRIBUTED),
            processes_untracked=self._guard.maps.read_global(layout.GLOBAL_UNTRACKED),
            build=f"{self._guard.build:08x}",
            map_layout=self._guard.layout,
            pin_dir=str(self._guard.pins.root),
            state_dir=str(self._state.path) if self._state else "",
            taken_over=self._guard.adopted,
            dns_forwarders=self.dns.forwarders,
            syscalls=syscalls,
        )

    @property
    def gpu_majors(self) -> list[int]:
        return list(self._guard.gpu_majors)

    def apply(self, policy: Policy, wire: tuple[bytes, str] | None = None, cgroup: Cgroup | None = None,
              still_wanted: Callable[[], bool] | None = None,
              containers: ContainersChange | None = None) -> ApplyResult:
        """``wire``: the request's policy bytes and digest (enforcer.wire.message_wire),
        made here when not given; ``cgroup``: already resolved (a restored sandbox
        keeps its cgroup); ``still_wanted``: asked just before the switch, so a
        caller that gave up (deadline, cancel) does not get a policy it was told
        failed (CallerGone, nothing applied); ``containers``: the sandbox's
        containers from the ones it has now (default: kept as they are). A
        ``create: true`` target's cgroup is made first, and removed again if the
        apply fails."""
        made = create_target_cgroup(policy.target, self._mount) if cgroup is None and policy.target.create else []
        try:
            cgroup = cgroup or resolve_target(policy.target, self._mount)
            while True:
                try:
                    return self._apply(policy, wire, cgroup, still_wanted, containers or dict)
                except _ContainersChanged:
                    continue
        except BaseException:
            remove_created(made)
            raise

    def _apply(self, policy: Policy, wire: tuple[bytes, str] | None, cgroup: Cgroup,
               still_wanted: Callable[[], bool] | None, change: ContainersChange,
               version: tuple[int, str] | None = None) -> ApplyResult:
        """``version``: the (generation, digest) the sandbox must still be at (a
        re-apply of its own policy must not undo a change made meanwhile)."""
        started = time.perf_counter()
        with self._lock:
            found = self._store.find(policy.sandbox)
            had = dict(found.containers) if found else {}
        containers = exec_roots.live(change(had))
        # Both may refuse the policy: before any change.
        compiled = encode.compile_prefixes(policy.network)
        compiled_exec = (exec_roots.compile_exec(policy, cgroup, containers.values())
                         if policy.exec is not None else None)
        self._check_syscall_hooks(policy)
        with self._lock:
            self._place(policy, cgroup)
            previous = self._store.find(policy.sandbox)
            if (previous.containers if previous else {}) != had or (
                    version is not None and (previous is None or (previous.generation, previous.policy_sha256) != version)):
                raise _ContainersChanged()
            slot = previous.slot if previous else self._take_slot()
            generation = self._store.new_generation()
            tag = self._store.new_tag()
            self._store.note_tag(tag, policy.sandbox, policy.labels)
            entries = {layout.MAP_RULES: encode.pack_entries(compiled, generation)}
            if compiled_exec is not None:
                entries.update(exec_rules.pack_exec(compiled_exec, generation))
            entries[layout.MAP_SYSCALL_RULES] = syscall_rules.pack_syscalls(policy.syscalls, generation)
            state = _sandbox_state(policy, generation, slot, tag)
            keys = {name: [key for key, _ in map_entries] for name, map_entries in entries.items()}
            wire_bytes, digest = wire or policy_wire(policy)
            record = SandboxRecord(policy, cgroup, generation, slot, tag, keys, now_ns(), digest, wire_bytes,
                                   containers=containers)
            if previous is not None:  # the same slot: its counters, baseline and escalation go on
                record.quarantined, record.frozen = previous.quarantined, previous.frozen
                record.escalation_handled = previous.escalation_handled
                record.counter_base, record.counters_since_ns = previous.counter_base, previous.counters_since_ns
            else:
                record.counters_since_ns = record.applied_unix_ns
            dns_change: DnsChange | None = None
            # Each step that changes something pushes its undo; a failure takes
            # back, newest first, what was done. For a replace the switch is the
            # point of no return; a new sandbox has its programs attached after it.
            with contextlib.ExitStack() as undo:
                if previous is None:
                    undo.callback(self._store.release_slot, slot)
                # On disk before the kernel: a daemon killed after the switch still knows it.
                self._save(record)
                undo.callback(self._unsave, policy.sandbox, previous)
                self._guard.maps.write_rules(entries)
                undo.callback(self._guard.maps.delete_rules, keys)
                self._guard.syscalls.attach(*syscall_rules.hooked(policy.syscalls))
                if previous is None:
                    self._guard.maps.reset_slot(slot)
                if policy.network.by_name:
                    dns_change = self.dns.prepare(policy, slot, generation, cgroup.path)
                    undo.callback(self.dns.rollback, dns_change)  # a new sandbox's: also once committed
                if still_wanted is not None and not still_wanted():
                    raise CallerGone("the caller's deadline passed or it cancelled before the switch: nothing applied")
                self._guard.maps.set_sandbox(cgroup, state)  # the switch
                if previous is not None:
                    undo.pop_all()
                else:
                    undo.callback(self._guard.unguard, cgroup.id)  # its kernel entry, and what got attached
                self._store.put(record)
                if previous is None:
                    undo.callback(self._store.pop, policy.sandbox)
                if dns_change is not None:
                    self.dns.commit(dns_change, policy)
                elif previous is not None and previous.policy.network.by_name:
                    self.dns.remove(policy.sandbox)
                if previous is None:
                    self._guard.guard(cgroup)
                    self._track(cgroup, policy.sandbox)
                undo.pop_all()
            if previous is not None:
                self._retired.put(previous.rule_keys)  # unreachable from now on; freed off the request path
            self._prune_syscall_hooks()
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

    def add_container(self, container: str, cgroup: str, root: str) -> SandboxRecord:
        """A container started inside a sandbox's cgroup: the policy applied again
        with its entries also resolved in the container's root filesystem.
        PolicyError names the field (or the entry missing from the image);
        SandboxNotFound when no sandbox guards the cgroup. Nothing changes on error."""
        added = exec_roots.container_root(container, cgroup, root, self._mount)

        def guarding() -> SandboxRecord:
            record = self._store.guarding(added.cgroup)
            if record.cgroup == added.cgroup:
                raise PolicyError("cgroup", f"{added.cgroup.path} is the cgroup of sandbox {record.policy.sandbox!r} "
                                            "itself: a container is added from a cgroup of its own below it")
            return record

        record = self._reapply(guarding, lambda had: {**had, container: added})
        log.info("container_added", sandbox=record.policy.sandbox, container=container, root=root)
        return record

    def remove_container(self, container: str) -> SandboxRecord:
        """The container ended: its root leaves the sandbox's rule set."""
        record = self._reapply(lambda: self._store.holding(container),
                               lambda had: {k: c for k, c in had.items() if k != container})
        log.info("container_removed", sandbox=record.policy.sandbox, container=container)
        return record

    def _reapply(self, find: Callable[[], SandboxRecord], change: ContainersChange) -> SandboxRecord:
        """The sandbox ``find`` returns (under the lock), applied again as it is
        but for its containers."""
        while True:
            with self._lock:
                record = find()
                policy, cgroup = record.policy, record.cgroup
                wire, version = (record.policy_wire, record.policy_sha256), (record.generation, record.policy_sha256)
            try:
                return self._apply(policy, wire, cgroup, None, change, version).record
            except _ContainersChanged:
                continue

    def _track(self, cgroup: Cgroup, sandbox: str) -> None:
        """The processes already in a new sandbox, for the escape programs. A
        map too full to take them all leaves some untracked: said, not fatal."""
        try:
            self._guard.maps.track_processes(cgroup)
        except KernelError as exc:
            log.error("sandbox_processes_not_tracked", sandbox=sandbox, error=str(exc),
                      note="a move out of the sandbox by these processes is not reported")

    def _check_syscall_hooks(self, policy: Policy) -> None:
        """A refused syscall this kernel does not build has no tracepoint: it can
        only fail (ENOSYS), so the entry holds without a hook, but an attempt is
        not reported. Said in the log; a policy stays portable across kernels."""
        names, every = syscall_rules.hooked(policy.syscalls)
        missing = [] if every else self._guard.syscalls.missing(sorted(names))
        if missing:
            log.warning("syscalls_not_built", sandbox=policy.sandbox, syscalls=missing,
                        note="this kernel does not build them: they fail with ENOSYS, attempts are not reported")

    def _refused_syscalls(self) -> tuple[set[str], bool]:
        """What the applied policies refuse: these syscalls, and every other
        one for some sandbox (call under the lock)."""
        names: set[str] = set()
        every = False
        for record in self._store.all():
            wanted, all_of_them = syscall_rules.hooked(record.policy.syscalls)
            names |= wanted
            every = every or all_of_them
        return names, every

    def _prune_syscall_hooks(self) -> None:
        """Keep only the syscall hooks the applied policies need (call under the lock)."""
        self._guard.syscalls.keep_only(*self._refused_syscalls())

    def remove(self, sandbox: str) -> SandboxRecord:
        with self._lock:
            record = self._remove_locked(sandbox)
        log.info("policy_removed", sandbox=sandbox, cgroup=str(record.cgroup.path))
        return record

    def _remove_locked(self, sandbox: str) -> SandboxRecord:
        record = self._store.pop(sandbox)
        self._guard.unguard(record.cgroup.id)
        self._guard.maps.untrack_processes(record.cgroup.id)
        self._prune_syscall_hooks()
        self.dns.remove(sandbox)
        self._guard.maps.delete_rules(record.rule_keys)
        self._store.release_slot(record.slot)
        if self._state:  # after the kernel: killed in between, the next daemon guards it again (fail closed)
            self._state.delete(sandbox)
        if record.policy.target.create:
            try:
                record.cgroup.path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:  # containers still run in it: theirs to end, no longer guarded
                log.warning("created_cgroup_kept", sandbox=sandbox, cgroup=str(record.cgroup.path), error=exc.strerror)
        return record

    def _save(self, record: SandboxRecord) -> None:
        if self._state:
            self._state.save(record)

    def _unsave(self, sandbox: str, previous: SandboxRecord | None) -> None:
        """Put the file back as it was before a failed apply."""
        if not self._state:
            return
        if previous is None:
            self._state.delete(sandbox)
        else:
            self._state.save(previous)

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

    def update_labels(self, sandbox: str, given: Mapping[str, str], replace: bool = False) -> SandboxRecord:
        """New labels for the sandbox's next denials (merged into the current ones
        unless ``replace``): a new tag, one map update; the rules are untouched.
        Events already in flight keep the labels they had. PolicyError names a bad label."""
        with self._lock:
            record = self._store.get(sandbox)
            current = {} if replace else record.policy.label_map
            labels = parse_labels({**current, **given}, "labels")
            tag = self._store.new_tag()
            self._store.note_tag(tag, sandbox, labels)
            policy = dataclasses.replace(record.policy, labels=labels)
            # The rules stay; a quarantine is not in this entry (the kernel keeps it per slot).
            self._guard.maps.set_sandbox(record.cgroup, _sandbox_state(policy, record.generation, record.slot, tag))
            record.policy, record.tag = policy, tag
            record.policy_wire, record.policy_sha256 = policy_wire(policy)
            self._save(record)
        log.info("labels_updated", sandbox=sandbox, labels=dict(labels))
        return record

    def release(self, sandbox: str) -> SandboxRecord:
        """Lift an escalation: thaw, end the quarantine, re-arm the threshold."""
        with self._lock:
            record = self._store.get(sandbox)
            self._guard.maps.reset_escalation(record.slot)  # ends a quarantine, re-arms the threshold
            if record.frozen and record.cgroup.still_exists():
                write_control(record.cgroup, "cgroup.freeze", "0")
            record.quarantined = record.frozen = False
            record.escalation_handled = record.escalation_seen_ns = 0
            self._save(record)
        log.info("sandbox_released", sandbox=sandbox)
        return record

    def counters(self, sandbox: str, reset: bool = False) -> tuple[CounterTotals, int]:
        """Exact counts since the apply or the last reset, and when that was. A reset
        never touches the kernel's counters: it moves the baseline, so a refusal
        counted between the read and the reset is not lost."""
        with self._lock:
            record = self._store.get(sandbox)
            totals = self._guard.maps.read_counters(record.slot)
            counts, since = totals.minus(record.counter_base), record.counters_since_ns
            if reset:
                record.counter_base, record.counters_since_ns = totals, now_ns()
                self._save(record)
            return counts, since

    def restore(self, saved: list[SandboxRecord]) -> None:
        """Take over from an earlier daemon: the saved sandboxes, checked
        against the sandbox entries in the adopted maps. Where they agree the
        entry is adopted as it is (no map write); where an apply or a relabel
        was cut short, the saved policy is applied again (one atomic switch);
        either way this build's programs are attached beside the old ones before
        any of it, so the sandbox is never unguarded. Rule entries of no live
        generation (an apply cut short) are deleted."""
        kernel = self._guard.maps.kernel_sandboxes() if self._guard.adopted else {}
        reapply: list[SandboxRecord] = []
        recreate: list[SandboxRecord] = []  # a created cgroup that is gone (a reboot): made and guarded again
        with self._lock:
            for record in saved:
                if not record.cgroup.still_exists():
                    self._guard.maps.forget_sandbox(record.cgroup.id)
                    kernel.pop(record.cgroup.id, None)
                    if record.policy.target.create:
                        recreate.append(record)
                        continue
                    log.info("vanished_sandbox_dropped", sandbox=record.policy.sandbox, cgroup=str(record.cgroup.path))
                    if self._state:
                        self._state.delete(record.policy.sandbox)
                    continue
                found = kernel.pop(record.cgroup.id, None)
                if found != (record.generation, record.slot, record.tag):
                    reapply.append(record)
                if found is not None:
                    generation, slot, tag = found
                    self._store.adopt(record, generation, slot, tag)
                    self._guard.guard(record.cgroup)
            for cgroup_id in kernel:  # the state directory does not know it: lost or edited by hand
                log.error("unknown_sandbox_entry_removed", cgroup_id=cgroup_id)
                self._guard.maps.forget_sandbox(cgroup_id)
            owners = {r.generation: r for r in self._store.all()}
            for generation, keys in self._guard.maps.rule_keys_by_generation().items():
                if generation in owners:
                    owners[generation].rule_keys = keys
                else:
                    self._guard.maps.delete_rules(keys)
            self._restore_forwarders({r.policy.sandbox for r in reapply})
            self._prune_syscall_hooks()  # this build's hooks for the adopted policies, before it takes over
        # (record, its cgroup or None to create it again, why): applied again.
        again = [*((r, r.cgroup, "the kernel's entry differs from the saved policy (a change was cut short)")
                   for r in reapply),
                 *((r, None, "the cgroup it created was gone (a reboot): created again") for r in recreate)]
        for record, cgroup, why in again:
            try:
                self.apply(record.policy, (record.policy_wire, record.policy_sha256), cgroup=cgroup,
                           containers=functools.partial(_saved, record.containers))
            except Exception as exc:
                log.error("sandbox_restore_failed", sandbox=record.policy.sandbox, error=str(exc),
                          guarded=self._store.find(record.policy.sandbox) is not None)
                continue
            log.warning("sandbox_reapplied", sandbox=record.policy.sandbox, why=why)
        self.dns.forget_stale_forwarders()
        log.info("state_restored", sandboxes=len(self._store.all()), reapplied=len(reapply) + len(recreate))

    def _restore_forwarders(self, reapplied: set[str]) -> None:
        """The earlier daemon's forwarders died with it: listen again for the
        adopted sandboxes that resolve by name, keeping what they learned (the
        forwarder owns those entries from here). Learned entries of any other
        generation (an apply cut short, a sandbox applied again) are deleted."""
        learned: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in self._guard.maps.read_name_addrs():  # one pass over the map
            learned.setdefault(layout.key_generation(layout.MAP_NAME_ADDRS, key), []).append((key, value))
        for record in self._store.all():
            if not record.policy.network.by_name or record.policy.sandbox in reapplied:
                continue
            entries = learned.pop(record.generation, [])
            try:
                self.dns.adopt(record.policy, record.slot, record.generation, record.cgroup.path, entries)
            except Exception as exc:  # the sandbox stays guarded; its queries go nowhere
                log.error("dns_forwarder_restore_failed", sandbox=record.policy.sandbox, error=str(exc))
                learned[record.generation] = entries
        self._guard.maps.delete_entries(layout.MAP_NAME_ADDRS, [key for entries in learned.values() for key, _ in entries])

    def remove_all(self) -> None:
        for record in self._store.all():
            self.remove(record.policy.sandbox)
        self.flush_retired()


def _saved(saved: Containers, _now: Containers) -> Containers:
    """A restored sandbox's containers: those of its saved record."""
    return saved


def _verdict(verdict: Verdict) -> int:
    return layout.VERDICT_ALLOW if verdict is Verdict.ALLOW else layout.VERDICT_DENY


def _sandbox_state(policy: Policy, generation: int, slot: int, tag: int) -> SandboxState:
    escalate = policy.escalate
    return SandboxState(
        generation=generation,
        slot=slot,
        tag=tag,
        escalate_after=escalate.after if escalate else 0,
        escalate_within_ns=round(escalate.within * 1e9) if escalate else 0,
        escalate_action=ESCALATE_CODES[escalate.action] if escalate else 0,
        mode=layout.MODE_AUDIT if policy.mode is Mode.AUDIT else layout.MODE_ENFORCE,
        default_verdict=_verdict(policy.network.default),
        exec_default=layout.VERDICT_NONE if policy.exec is None else _verdict(policy.exec.default),
        gpu=_verdict(policy.devices.gpu),
        dns=policy.network.by_name,
        syscall_default=syscall_rules.default_verdict(policy.syscalls),
    )
