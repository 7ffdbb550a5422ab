"""Typed access to the pinned BPF maps: every read and write the daemon makes,
by map, with the layouts of enforcer.kernel.layout. Loading and attaching are
enforcer.kernel.loader's and guard's; this knows the maps only."""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from typing import Any, TypeAlias

from enforcer.cgroupfs import Cgroup
from enforcer.kernel import layout
from enforcer.kernel.errors import KernelError, MapFull

# A map key or value: a ctypes structure from layout.py, or bytes packed by encode.py.
MapBytes: TypeAlias = "ctypes._CData | bytes"


def _pointer(data: MapBytes) -> object:
    return data if isinstance(data, bytes) else ctypes.byref(data)


def _map_error(name: str, err: int) -> KernelError:
    if err in (errno.E2BIG, errno.ENOSPC):
        limit = {layout.MAP_RULES: layout.MAX_PREFIXES, layout.MAP_EXEC_IDS: layout.MAX_EXEC_IDS,
                 layout.MAP_EXEC_PATHS: layout.MAX_EXEC_PATHS, layout.MAP_SYSCALL_RULES: layout.MAX_SYSCALL_RULES}.get(name)
        room = f" ({limit:,} entries over all sandboxes)" if limit else ""
        if name == layout.MAP_NAME_ADDRS:
            room = f" ({layout.MAX_NAME_ADDRS:,} learned addresses over all sandboxes)"
        return MapFull(f"BPF map {name} is full{room}: remove or shrink other policies")
    return KernelError(f"updating BPF map {name} failed: {os.strerror(err)}")


@dataclass(frozen=True)
class SandboxState:
    """What the kernel needs to know of one sandbox besides its rules."""

    generation: int
    slot: int
    tag: int             # names the sandbox and its current labels in events
    mode: int            # layout.MODE_*
    default_verdict: int  # layout.VERDICT_*, for the network
    exec_default: int = 0  # layout.VERDICT_*, or VERDICT_NONE when exec is not judged
    gpu: int = 0           # layout.VERDICT_*
    escalate_after: int = 0  # 0: no escalation
    escalate_within_ns: int = 0
    escalate_action: int = 0  # layout.ESCALATE_*
    dns: bool = False         # port-53 traffic goes to the forwarder; learned addresses count
    syscall_default: int = 0  # layout.VERDICT_*: a syscall the rules do not name


@dataclass
class CounterTotals:
    refused: list[int]
    audited: list[int]
    suppressed: int
    lost: int

    def minus(self, base: CounterTotals | None) -> CounterTotals:
        """Counts since ``base`` was read (the kernel's counters only ever grow)."""
        if base is None:
            return self
        return CounterTotals(
            [a - b for a, b in zip(self.refused, base.refused, strict=True)],
            [a - b for a, b in zip(self.audited, base.audited, strict=True)],
            self.suppressed - base.suppressed,
            self.lost - base.lost,
        )


class KernelMaps:
    """The loaded build's maps (pinned: the same maps across daemons of one
    layout). Not thread-safe: the daemon serialises writes."""

    def __init__(self, loaded: Any, lib: Any, ncpus: int) -> None:
        self._bpf = loaded
        self._lib = lib
        self._ncpus = ncpus
        self._fds = {name: loaded[name].get_fd() for name in layout.DAEMON_MAPS}
        self._batch_ok = True

    def _update(self, name: str, key: MapBytes, value: MapBytes) -> None:
        if self._lib.bpf_update_elem(self._fds[name], _pointer(key), _pointer(value), 0) < 0:
            raise _map_error(name, ctypes.get_errno())

    def _delete(self, name: str, key: MapBytes) -> None:
        # A missing key is fine: deletes are idempotent clean-up.
        self._lib.bpf_delete_elem(self._fds[name], _pointer(key))

    def read_config(self) -> layout.Config:
        value = layout.Config()
        self._lib.bpf_lookup_elem(self._fds[layout.MAP_CONFIG], ctypes.byref(ctypes.c_uint32(0)), ctypes.byref(value))
        return value

    def write_config(self, levels_mask: int, events_per_sec: int) -> None:
        """Which cgroup levels sandboxes sit at, the event budget, and who the daemon is."""
        self._update(layout.MAP_CONFIG, ctypes.c_uint32(0), layout.Config(
            levels_mask=levels_mask, events_per_sec=events_per_sec, daemon_tgid=os.getpid()))

    def set_active(self, build: int) -> None:
        """The build whose tracepoint and LSM programs act."""
        self._update(layout.MAP_ACTIVE, ctypes.c_uint32(0), ctypes.c_uint32(build))

    def mark_gpu_major(self, major: int) -> None:
        self._update(layout.MAP_GPU_MAJORS, ctypes.c_uint32(major), ctypes.c_uint8(1))

    def write_entries(self, map_name: str, entries: list[tuple[bytes, bytes]]) -> None:
        """Rule entries packed by enforcer.kernel.encode (key bytes, value bytes),
        in one BPF_MAP_UPDATE_BATCH call (half the cost of one syscall per entry)
        where the kernel supports it, else one by one."""
        if not entries:
            return
        fd = self._fds[map_name]
        if self._batch_ok:
            keys = ctypes.create_string_buffer(b"".join(k for k, _ in entries))
            values = ctypes.create_string_buffer(b"".join(v for _, v in entries))
            count = ctypes.c_uint32(len(entries))
            if self._lib.bpf_update_batch(fd, ctypes.cast(keys, ctypes.c_void_p),
                                          ctypes.cast(values, ctypes.c_void_p), ctypes.byref(count)) == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise _map_error(map_name, err)
            self._batch_ok = False  # an older kernel: fall through to single updates
        for key, value in entries:
            self._update(map_name, key, value)

    def delete_entries(self, map_name: str, keys: list[bytes]) -> None:
        """Idempotent: keys already gone are fine (batch delete stops at the first
        missing key, so what it did not reach is deleted one by one)."""
        if not keys:
            return
        fd = self._fds[map_name]
        done = 0
        if self._batch_ok:
            buffer = ctypes.create_string_buffer(b"".join(keys))
            count = ctypes.c_uint32(len(keys))
            if self._lib.bpf_delete_batch(fd, ctypes.cast(buffer, ctypes.c_void_p), ctypes.byref(count)) == 0:
                return
            done = count.value
        for key in keys[done:]:
            self._delete(map_name, key)

    def write_rules(self, entries: dict[str, list[tuple[bytes, bytes]]]) -> None:
        """Every map's entries of one generation; on failure nothing of them stays."""
        written: list[str] = []
        try:
            for map_name, map_entries in entries.items():
                written.append(map_name)
                self.write_entries(map_name, map_entries)
        except Exception:
            self.delete_rules({name: [k for k, _ in entries[name]] for name in written})
            raise

    def delete_rules(self, keys: dict[str, list[bytes]]) -> None:
        for map_name, map_keys in keys.items():
            self.delete_entries(map_name, map_keys)

    def set_sandbox(self, cgroup: Cgroup, state: SandboxState) -> None:
        """One map update: the sandbox switches to the new generation's rules at once."""
        value = layout.Sandbox(generation=state.generation, slot=state.slot, tag=state.tag, mode=state.mode,
                               default_verdict=state.default_verdict, exec_default=state.exec_default, gpu=state.gpu,
                               escalate_after=state.escalate_after,
                               escalate_within_ns=state.escalate_within_ns, escalate_action=state.escalate_action,
                               dns=int(state.dns), syscall_default=state.syscall_default)
        self._update(layout.MAP_SANDBOXES, ctypes.c_uint64(cgroup.id), value)

    def reset_slot(self, slot: int) -> None:
        zero_counters = (layout.Counters * self._ncpus)()
        zero_rate = (layout.Rate * self._ncpus)()
        self._update(layout.MAP_COUNTERS, ctypes.c_uint32(slot), zero_counters)
        self._update(layout.MAP_RATE, ctypes.c_uint32(slot), zero_rate)
        self._update(layout.MAP_DNS_COUNTERS, ctypes.c_uint32(slot), layout.DnsCounters())
        self.reset_escalation(slot)

    def reset_escalation(self, slot: int) -> None:
        self._update(layout.MAP_ESCALATION, ctypes.c_uint32(slot), layout.Escalation())

    def escalation_fired(self, slot: int) -> int:
        """0, or the denial count at which the slot's escalation fired."""
        value = layout.Escalation()
        if self._lib.bpf_lookup_elem(self._fds[layout.MAP_ESCALATION], ctypes.byref(ctypes.c_uint32(slot)),
                                     ctypes.byref(value)) < 0:
            return 0
        return int(value.fired)

    def read_counters(self, slot: int) -> CounterTotals:
        per_cpu = (layout.Counters * self._ncpus)()
        slot_key = ctypes.byref(ctypes.c_uint32(slot))
        if self._lib.bpf_lookup_elem(self._fds[layout.MAP_COUNTERS], slot_key, ctypes.byref(per_cpu)) < 0:
            raise KernelError(f"reading counters failed: {os.strerror(ctypes.get_errno())}")
        totals = CounterTotals([0] * layout.NUM_KINDS, [0] * layout.NUM_KINDS, 0, 0)
        for cpu in per_cpu:
            for kind in range(layout.NUM_KINDS):
                totals.refused[kind] += cpu.refused[kind]
                totals.audited[kind] += cpu.audited[kind]
            totals.suppressed += cpu.suppressed
            totals.lost += cpu.lost
        dns = self.read_dns_counters(slot)  # the forwarder's, kept beside the kernel's
        totals.refused[layout.KIND_DNS] += dns.refused
        totals.audited[layout.KIND_DNS] += dns.audited
        totals.suppressed += dns.suppressed
        totals.lost += dns.lost
        return totals

    def read_dns_counters(self, slot: int) -> layout.DnsCounters:
        value = layout.DnsCounters()
        self._lib.bpf_lookup_elem(self._fds[layout.MAP_DNS_COUNTERS], ctypes.byref(ctypes.c_uint32(slot)), ctypes.byref(value))
        return value

    def write_dns_counters(self, slot: int, value: layout.DnsCounters) -> None:
        """Only the daemon writes these (the forwarder decides DNS denials), under its lock."""
        self._update(layout.MAP_DNS_COUNTERS, ctypes.c_uint32(slot), value)

    def set_forwarder(self, slot: int, netns_cookie: int, ports: layout.Forwarder) -> None:
        self._update(layout.MAP_DNS_FORWARDERS, layout.FwdKey(slot=slot, netns_cookie=netns_cookie), ports)

    def clear_forwarder(self, slot: int, netns_cookie: int) -> None:
        self._delete(layout.MAP_DNS_FORWARDERS, layout.FwdKey(slot=slot, netns_cookie=netns_cookie))

    def forwarder_keys(self) -> list[tuple[int, int]]:
        """(slot, netns cookie) of every forwarder entry (a restarted daemon clears them)."""
        return [(int(k.slot), int(k.netns_cookie)) for k in self._bpf[layout.MAP_DNS_FORWARDERS]]

    def read_name_addrs(self) -> list[tuple[bytes, bytes]]:
        """Every learned address entry (key bytes, value bytes): what a restarted daemon adopts."""
        table = self._bpf[layout.MAP_NAME_ADDRS]
        return [(bytes(k), bytes(v)) for k, v in table.items()]

    def read_global(self, index: int) -> int:
        per_cpu = (ctypes.c_uint64 * self._ncpus)()
        self._lib.bpf_lookup_elem(self._fds[layout.MAP_GLOBALS], ctypes.byref(ctypes.c_uint32(index)), ctypes.byref(per_cpu))
        return sum(per_cpu)

    def kernel_sandboxes(self) -> dict[int, tuple[int, int, int]]:
        """cgroup id -> (generation, slot, tag) of every sandbox entry in the maps."""
        return {int(key.value): (int(value.generation), int(value.slot), int(value.tag))
                for key, value in self._bpf[layout.MAP_SANDBOXES].items()}

    def rule_keys_by_generation(self) -> dict[int, dict[str, list[bytes]]]:
        """Every rule entry's key, by the generation it belongs to (not the
        learned addresses: the DNS forwarder owns those, see read_name_addrs)."""
        found: dict[int, dict[str, list[bytes]]] = {}
        for map_name in (layout.MAP_RULES, layout.MAP_EXEC_IDS, layout.MAP_EXEC_PATHS, layout.MAP_SYSCALL_RULES):
            for key in self._bpf[map_name]:
                raw = bytes(key)
                generation = layout.key_generation(map_name, raw)
                found.setdefault(generation, {}).setdefault(map_name, []).append(raw)
        return found

    def forget_sandbox(self, cgroup_id: int) -> None:
        self._delete(layout.MAP_SANDBOXES, ctypes.c_uint64(cgroup_id))

    def track_processes(self, cgroup: Cgroup) -> int:
        """Tell the kernel which processes a new sandbox holds (the escape
        programs track forks and moves from here on). Returns how many."""
        value = bytes(layout.Tracked(sandbox_cgroup_id=cgroup.id, level=cgroup.level))
        entries = []
        for procs in cgroup.path.rglob("cgroup.procs"):
            try:
                pids = procs.read_text().split()
            except OSError:
                continue  # a child cgroup removed meanwhile
            entries += [(bytes(ctypes.c_uint32(int(pid))), value) for pid in pids]
        self.write_entries(layout.MAP_SANDBOXED_TASKS, entries)  # one batch call
        return len(entries)

    def untrack_processes(self, cgroup_id: int) -> None:
        for key, value in list(self._bpf[layout.MAP_SANDBOXED_TASKS].items()):
            if value.sandbox_cgroup_id == cgroup_id:
                self._delete(layout.MAP_SANDBOXED_TASKS, key)
