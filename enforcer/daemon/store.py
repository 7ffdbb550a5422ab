"""Which policies are applied, where, and under which kernel generation."""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from enforcer.cgroupfs import Cgroup
from enforcer.kernel.maps import CounterTotals
from enforcer.policy import Policy

# Events can still arrive under a tag a moment after it was replaced (new policy
# or new labels); keep enough retired tags to name their sandbox and labels.
RETIRED_TAGS_KEPT = 4096


class ApplyConflict(Exception):
    """The request is well-formed but clashes with an applied sandbox (``record``)."""

    def __init__(self, message: str, record: SandboxRecord) -> None:
        super().__init__(message)
        self.record = record


class NestingConflict(ApplyConflict):
    """The target cgroup is above or below another sandbox's cgroup."""


class SandboxNotFound(LookupError):
    pass


class CapacityExhausted(RuntimeError):
    pass


@dataclass(frozen=True)
class ContainerRoot:
    """A container inside a sandbox's cgroup whose files the sandbox's exec entries also name."""

    container: str
    cgroup: Cgroup  # the container's own, below the sandbox's
    root: str       # its root filesystem, where its entries are resolved


Containers = dict[str, ContainerRoot]  # container id -> root


@dataclass
class SandboxRecord:
    policy: Policy
    cgroup: Cgroup
    generation: int
    slot: int
    tag: int  # what the kernel stamps on this sandbox's events: its id and current labels
    rule_keys: dict[str, list[bytes]] = field(default_factory=dict)  # map -> keys of this generation, deleted on retire
    applied_unix_ns: int = 0
    policy_sha256: str = ""  # enforcer.wire.message_wire digest of the policy as applied (new labels: new digest)
    policy_wire: bytes = b""  # the policy's deterministic wire form (what the state directory keeps)
    quarantined: bool = False
    frozen: bool = False
    counter_base: CounterTotals | None = None  # kernel totals at the last stats reset
    counters_since_ns: int = 0
    escalation_handled: int = 0  # the kernel's `fired` count already acted on (0: none)
    escalation_seen_ns: int = 0  # when a fired escalation was first seen without its event
    containers: Containers = field(default_factory=dict)


@dataclass(frozen=True)
class TagInfo:
    sandbox: str
    labels: tuple[tuple[str, str], ...]

    @functools.cached_property
    def label_map(self) -> dict[str, str]:
        """Built once per tag: every event of the tag carries it (do not mutate)."""
        return dict(self.labels)


class PolicyStore:
    def __init__(self, max_sandboxes: int) -> None:
        self._records: dict[str, SandboxRecord] = {}
        self._free_slots = list(range(max_sandboxes - 1, -1, -1))
        self._next_generation = 1
        self._next_tag = 1
        self._tags: OrderedDict[int, TagInfo] = OrderedDict()
        # A container's cgroup id -> its short id, kept a while after it leaves (events in flight).
        self._container_cgroups: OrderedDict[int, str] = OrderedDict()
        self._container_infos: OrderedDict[tuple[int, str], TagInfo] = OrderedDict()

    def get(self, sandbox: str) -> SandboxRecord:
        try:
            return self._records[sandbox]
        except KeyError:
            raise SandboxNotFound(f"no policy for sandbox {sandbox!r}") from None

    def find(self, sandbox: str) -> SandboxRecord | None:
        return self._records.get(sandbox)

    def all(self) -> list[SandboxRecord]:
        return sorted(self._records.values(), key=lambda r: r.policy.sandbox)

    def guarding(self, cgroup: Cgroup) -> SandboxRecord:
        """The sandbox whose cgroup holds ``cgroup`` (sandboxes do not nest: at most one)."""
        for record in self._records.values():
            if record.cgroup.contains(cgroup):
                return record
        raise SandboxNotFound(f"no sandbox guards cgroup {cgroup.path}")

    def holding(self, container: str) -> SandboxRecord:
        """The sandbox a container was added to."""
        for record in self._records.values():
            if container in record.containers:
                return record
        raise SandboxNotFound(f"no sandbox holds container {container!r}")

    def check_placement(self, policy: Policy, cgroup: Cgroup) -> None:
        """Refuse a sandbox id reused for another cgroup, a cgroup guarded twice,
        and nested sandboxes (one cgroup inside another's): the kernel side
        assumes at most one sandbox on any cgroup path."""
        existing = self._records.get(policy.sandbox)
        if existing is not None and existing.cgroup.id != cgroup.id:
            raise ApplyConflict(
                f"sandbox {policy.sandbox!r} already exists with target {existing.cgroup.path}; "
                f"remove it first to move it to {cgroup.path}",
                existing,
            )
        for other in self._records.values():
            if other.policy.sandbox == policy.sandbox:
                continue
            if other.cgroup.id == cgroup.id:
                raise ApplyConflict(f"cgroup {cgroup.path} is already guarded by sandbox {other.policy.sandbox!r}", other)
            if other.cgroup.contains(cgroup) or cgroup.contains(other.cgroup):
                raise NestingConflict(
                    f"cgroup {cgroup.path} is nested with {other.cgroup.path} of sandbox "
                    f"{other.policy.sandbox!r}; sandboxes cannot nest",
                    other,
                )

    def new_generation(self) -> int:
        generation = self._next_generation
        self._next_generation = _next_u32(generation)
        return generation

    def new_tag(self) -> int:
        tag = self._next_tag
        self._next_tag = _next_u32(tag)
        return tag

    def take_slot(self) -> int:
        if not self._free_slots:
            raise CapacityExhausted("all sandbox slots are in use")
        return self._free_slots.pop()

    def release_slot(self, slot: int) -> None:
        self._free_slots.append(slot)

    def put(self, record: SandboxRecord) -> SandboxRecord | None:
        previous = self._records.get(record.policy.sandbox)
        self._records[record.policy.sandbox] = record
        self._note_containers(record)
        return previous

    def _note_containers(self, record: SandboxRecord) -> None:
        for container in record.containers.values():
            self._container_cgroups[container.cgroup.id] = container.container[:12]
        while len(self._container_cgroups) > RETIRED_TAGS_KEPT:
            self._container_cgroups.popitem(last=False)

    def note_tag(self, tag: int, sandbox: str, labels: tuple[tuple[str, str], ...]) -> None:
        """Record whom a tag's events belong to, before the kernel can emit any."""
        self._tags[tag] = TagInfo(sandbox, labels)
        while len(self._tags) > RETIRED_TAGS_KEPT + len(self._records):
            self._tags.popitem(last=False)

    def adopt(self, record: SandboxRecord, generation: int, slot: int, tag: int) -> None:
        """A sandbox an earlier daemon left in the kernel, under the ids the kernel has."""
        record.generation, record.slot, record.tag = generation, slot, tag
        self._free_slots.remove(slot)
        self._next_generation = max(self._next_generation, _next_u32(generation))
        self._next_tag = max(self._next_tag, _next_u32(tag))
        self.note_tag(tag, record.policy.sandbox, record.policy.labels)
        self._records[record.policy.sandbox] = record
        self._note_containers(record)

    def pop(self, sandbox: str) -> SandboxRecord:
        record = self.get(sandbox)
        del self._records[sandbox]
        return record

    def by_slot(self, slot: int) -> SandboxRecord | None:
        return next((r for r in self._records.values() if r.slot == slot), None)

    def tag_info(self, tag: int, slot: int = -1) -> TagInfo | None:
        """Whom a tag's events belong to. A tag from before a restart that is no
        longer known (labels replaced, then the daemon restarted before the
        event was drained) falls back to the sandbox now in the event's slot."""
        info = self._tags.get(tag)
        if info is None and slot >= 0:
            record = self.by_slot(slot)
            if record is not None:
                info = self._tags.get(record.tag)
        return info

    def event_info(self, tag: int, slot: int, cgroup_id: int) -> TagInfo | None:
        """Whom an event belongs to: its tag's sandbox and labels, and, for an
        event of a container added to the sandbox, ``container`` (its short id)."""
        info = self.tag_info(tag, slot)
        container = self._container_cgroups.get(cgroup_id)
        if info is None or container is None:
            return info
        found = self._container_infos.get((tag, container))
        if found is None:  # one per tag and container: label_map is built once for all its events
            found = TagInfo(info.sandbox, (*info.labels, ("container", container)))
            self._container_infos[(tag, container)] = found
            while len(self._container_infos) > RETIRED_TAGS_KEPT:
                self._container_infos.popitem(last=False)
        return found


def _next_u32(value: int) -> int:
    """The next id after ``value``; 0 is never used (it means "none" in the kernel)."""
    return value + 1 if value + 1 < 2**32 else 1


def now_ns() -> int:
    return time.time_ns()
