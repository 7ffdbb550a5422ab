"""Load the BPF programs once, attach them to sandbox cgroups, and keep the maps
in step with the policies. bpf/enforcer.bpf.c is what runs in the kernel:
network.bpf.c (sockets), exec.bpf.c (exec), device.bpf.c (GPU device nodes)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from enforcer.cgroupfs import Cgroup
from enforcer.kernel import btf, devices, layout
from enforcer.kernel.pins import PinDir, layout_id, tracepoint_id
from enforcer.kernel.ringbuf import EventRing
from enforcer.kernel.syscall_hooks import SyscallHooks, lsm_defines, syscall_hook_of
from enforcer.settings import EXEC_MODE_AUTO, EXEC_MODE_LSM, EXEC_MODE_TRACEPOINT, EXEC_MODES

# UAPI numbers (stable): bpf_prog_type and bpf_attach_type of the cgroup programs.
_PROG_CGROUP_SOCK, _PROG_CGROUP_DEVICE, _PROG_CGROUP_SOCK_ADDR = 9, 15, 18
CGROUP_PROGRAMS = {  # name -> (program type, attach type)
    "enf_connect4": (_PROG_CGROUP_SOCK_ADDR, 10),
    "enf_connect6": (_PROG_CGROUP_SOCK_ADDR, 11),
    "enf_sendmsg4": (_PROG_CGROUP_SOCK_ADDR, 14),
    "enf_sendmsg6": (_PROG_CGROUP_SOCK_ADDR, 15),
    "enf_sock_create": (_PROG_CGROUP_SOCK, 2),
    "enf_device": (_PROG_CGROUP_DEVICE, 6),
    # DNS redirection: show a redirected socket the resolver it addressed.
    "enf_recvmsg4": (_PROG_CGROUP_SOCK_ADDR, 19),
    "enf_recvmsg6": (_PROG_CGROUP_SOCK_ADDR, 20),
    "enf_getpeername4": (_PROG_CGROUP_SOCK_ADDR, 29),
    "enf_getpeername6": (_PROG_CGROUP_SOCK_ADDR, 30),
}
ATTACH_TYPES = {name: attach for name, (_, attach) in CGROUP_PROGRAMS.items()}
SOURCE = layout.BPF_DIR / "enforcer.bpf.c"
LSM_LIST = Path("/sys/kernel/security/lsm")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")



def bpf_source() -> str:
    """The C that is compiled, our includes inlined: bcc rewrites tracepoint
    arguments only in the text it is given, not in included files."""
    return _inline(SOURCE)


def _inline(path: Path) -> str:
    return re.sub(r'^#include "([^"]+)"$', lambda m: _inline(layout.BPF_DIR / m.group(1)), path.read_text(), flags=re.M)


def lsm_list() -> list[str]:
    """The LSMs the running kernel enabled at boot (none if securityfs is absent)."""
    try:
        return [name for name in LSM_LIST.read_text().strip().split(",") if name]
    except OSError:
        return []


def bpf_lsm_available() -> bool:
    return "bpf" in lsm_list()


def default_exec_mode(lsm_available: bool | None = None) -> str:
    available = bpf_lsm_available() if lsm_available is None else lsm_available
    return EXEC_MODE_LSM if available else EXEC_MODE_TRACEPOINT


def compile_defines(exec_mode: str, offsets: dict[str, int] | None = None,
                    extra: dict[str, str] | None = None) -> dict[str, str]:
    """The macros the loader passes: the BTF offsets of internal fields, the exec
    mode, and (``extra``) where the maps are pinned and which build this is."""
    offsets = offsets if offsets is not None else btf.kernel_constants()
    defines = {name: str(value) for name, value in offsets.items()} | lsm_defines(exec_mode == EXEC_MODE_LSM)
    if exec_mode == EXEC_MODE_LSM:
        defines["ENF_LSM"] = "1"
    return {**defines, **(extra or {})}


def compile_flags(exec_mode: str, offsets: dict[str, int] | None = None,
                  extra: dict[str, str] | None = None) -> list[str]:
    return ["-Wno-unused-function"] + [f"-D{name}={value}"
                                       for name, value in compile_defines(exec_mode, offsets, extra).items()]


def print_source(exec_mode: str | None = None) -> str:
    """What --print-bpf shows: the defines, then the compiled text."""
    defines = compile_defines(exec_mode or default_exec_mode())
    return "".join(f"#define {name} {value}\n" for name, value in defines.items()) + bpf_source()


class KernelError(RuntimeError):
    pass


class LayoutChanged(KernelError):
    """Pinned maps of another layout are in use: this build cannot adopt them."""


class MapFull(KernelError):
    """A rule map has no room for a generation's entries (all sandboxes share it)."""


def _map_error(name: str, err: int) -> KernelError:
    if err in (errno.E2BIG, errno.ENOSPC):
        limit = {layout.MAP_RULES: layout.MAX_PREFIXES, layout.MAP_EXEC_IDS: layout.MAX_EXEC_IDS,
                 layout.MAP_EXEC_PATHS: layout.MAX_EXEC_PATHS, layout.MAP_SYSCALL_RULES: layout.MAX_SYSCALL_RULES}.get(name)
        room = f" ({limit:,} entries over all sandboxes)" if limit else ""
        if name == layout.MAP_NAME_ADDRS:
            room = f" ({layout.MAX_NAME_ADDRS:,} learned addresses over all sandboxes)"
        return MapFull(f"BPF map {name} is full{room}: remove or shrink other policies")
    return KernelError(f"updating BPF map {name} failed: {os.strerror(err)}")


# A map key or value: a ctypes structure from layout.py, or bytes packed by encode.py.
MapBytes: TypeAlias = "ctypes._CData | bytes"


def _pointer(data: MapBytes) -> object:
    return data if isinstance(data, bytes) else ctypes.byref(data)


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


class SandboxGuard:
    """Owns the compiled BPF object. Not thread-safe: the daemon serialises map
    writes; the event poller only reads the ring buffer."""

    def __init__(self, pin_root: Path, events_per_sec: int = 2000, exec_mode: str = EXEC_MODE_AUTO) -> None:
        """``exec_mode``: one of EXEC_MODES. ``lsm`` asked for on a kernel where
        BPF-LSM does not load is a KernelError; ``auto`` then falls back to the
        tracepoint and says why in ``lsm_unavailable``."""
        from bcc.libbcc import lib
        from bcc.utils import get_possible_cpus

        if exec_mode not in EXEC_MODES:
            raise KernelError(f"exec mode {exec_mode!r}: must be one of {', '.join(EXEC_MODES)}")
        lsm_available = bpf_lsm_available()
        if exec_mode == EXEC_MODE_LSM and not lsm_available:
            raise KernelError("exec mode lsm: this kernel does not enable BPF-LSM (bpf is not in "
                              f"{LSM_LIST}; boot it with lsm=...,bpf), use --exec-mode auto or tracepoint")
        self.lsm_unavailable: str | None = None
        self._lib = lib
        self._ncpus = len(get_possible_cpus())
        self.pins = PinDir(pin_root)
        self.layout = layout_id()
        others = [name for name in self.pins.layouts() if name != self.layout]
        if others:
            raise LayoutChanged(
                f"{pin_root} holds enforcement state of another map layout ({', '.join(others)}; this build has "
                f"{self.layout}): it cannot be adopted without a gap. Stop the old daemon and run "
                f"`enforcer daemon --uninstall` with the version that created it, then start this one "
                f"(its sandboxes are unguarded until their policies are applied again)")
        maps_dir = self.pins.maps_dir(self.layout)
        self.adopted = (maps_dir / "sandboxes").exists()  # state left by an earlier daemon
        maps_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.build = self.pins.new_build()
        pin_defines = {"ENF_MAPS_DIR": f'"{maps_dir}"', "ENF_ACTIVE_PATH": f'"{self.pins.active_path}"',
                       "ENF_BUILD": str(self.build)}
        offsets = btf.kernel_constants()
        chosen = default_exec_mode(lsm_available) if exec_mode == EXEC_MODE_AUTO else exec_mode
        source = bpf_source().encode()
        try:
            self._bpf, self._links = self._load(source, chosen, offsets, pin_defines)
        except Exception as exc:
            if chosen != EXEC_MODE_LSM:
                raise
            if exec_mode == EXEC_MODE_LSM:
                raise KernelError(f"exec mode lsm: the BPF-LSM program does not load here: {exc}") from exc
            # BPF-LSM listed but not loadable (lockdown, no BTF for it): the fallback, said out loud.
            self.lsm_unavailable = str(exc)
            chosen = EXEC_MODE_TRACEPOINT
            self._bpf, self._links = self._load(source, chosen, offsets, pin_defines)
        self.exec_mode = chosen
        self._programs = [(self._bpf.load_func(name, prog_type, None, attach_type), attach_type)
                          for name, (prog_type, attach_type) in CGROUP_PROGRAMS.items()]
        self.pins.pin_build(self.build, {fn.name.decode(): fn.fd for fn, _ in self._programs}, self._links)
        # Earlier builds' programs (open fds, by build): this one's replace them, then retire them.
        self._old_programs = {build: self.pins.programs(build) for build in self.pins.builds() if build != self.build}
        self._attached: dict[int, int] = {}  # cgroup id -> open fd of the cgroup directory
        self._levels: dict[int, int] = {}    # cgroup id -> level
        self._fds = {name: self._bpf[name].get_fd() for name in
                     ("sandboxes", layout.MAP_RULES, layout.MAP_EXEC_IDS, layout.MAP_EXEC_PATHS,
                      layout.MAP_SYSCALL_RULES, "sandboxed_tasks", "config", "counters",
                      "rate", "globals", "gpu_majors", "escalation", "active", "dns_forwarders",
                      layout.MAP_NAME_ADDRS, "dns_counters")}
        self._events_per_sec = events_per_sec
        self._batch_ok = True
        # Until this build is active, the levels the old build searches stay searched.
        self._inherited_mask = self._read_config().levels_mask if self.adopted else 0
        self._write_config()
        self.syscalls = SyscallHooks(self._bpf, self.pins, self.build, lsm=self.exec_mode == EXEC_MODE_LSM)
        # Every map pin this build relies on, with the fd that can pin it again.
        self._map_pins = {self.pins.active_path: self._bpf["active"].get_fd()} | {
            pin: self._bpf[pin.name].get_fd() for pin in sorted(maps_dir.iterdir())}
        self.gpu_majors = devices.gpu_majors()
        for major in self.gpu_majors:
            self._update("gpu_majors", ctypes.c_uint32(major), ctypes.c_uint8(1))

    def _load(self, source: bytes, exec_mode: str, offsets: dict[str, int],
              pin_defines: dict[str, str]) -> tuple[Any, dict[str, int]]:
        """Compile and load for ``exec_mode``, attach the links; nothing is left
        attached if any step fails."""
        loaded = _manual_attach_bpf()(text=source, cflags=compile_flags(exec_mode, offsets, pin_defines))
        try:
            return loaded, self._attach_links(loaded)
        except Exception:
            loaded.cleanup()
            raise

    def _attach_links(self, loaded: Any) -> dict[str, int]:
        """Attach the tracepoint, raw tracepoint and LSM programs as links (fds
        that a pin keeps alive). bcc would attach them itself, tracepoints with
        a perf-event ioctl that ends with the process; its automatic attachment
        is off (``_manual_attach_bpf``) and this does it instead. On a failure
        the links made so far are closed."""
        from bcc import BPF

        links: dict[str, int] = {}
        module = loaded.module
        try:
            for index in range(self._lib.bpf_num_functions(module)):
                name = self._lib.bpf_function_name(module, index).decode()
                if name.startswith("tracepoint__"):
                    _, category, event = name.split("__", 2)
                    fn = loaded.load_func(name.encode(), BPF.TRACEPOINT)
                    links[f"tp-{event}"] = self.pins.bpf.perf_link(fn.fd, tracepoint_id(category, event))
                elif name.startswith("raw_tracepoint__"):
                    fn = loaded.load_func(name.encode(), BPF.RAW_TRACEPOINT)
                    links[f"raw-{name.removeprefix('raw_tracepoint__')}"] = self._link_fd(
                        self._lib.bpf_attach_raw_tracepoint(fn.fd, name.removeprefix("raw_tracepoint__").encode()),
                        name)
                elif name.startswith("lsm__"):
                    fn = loaded.load_func(name.encode(), BPF.LSM)
                    links[name] = self._link_fd(self._lib.bpf_attach_lsm(fn.fd), name)
        except Exception:
            for fd in links.values():
                os.close(fd)
            raise
        return links

    @staticmethod
    def _link_fd(fd: int, name: str) -> int:
        if fd < 0:
            raise KernelError(f"attaching {name} failed: {os.strerror(ctypes.get_errno() or -fd)}")
        return fd

    def activate(self) -> None:
        """Make this build's tracepoint and LSM programs the ones that act (one
        map write), then retire every other build: detach what is left of its
        cgroup programs and drop its pins. Call once the adopted sandboxes'
        cgroup programs are swapped for this build's (guard)."""
        self._update("active", ctypes.c_uint32(0), ctypes.c_uint32(self.build))
        for build, programs in self._old_programs.items():
            try:
                self.pins.retire_build(build, programs, ATTACH_TYPES, list(self._attached.values()))
            finally:
                for fd in programs.values():
                    os.close(fd)
        self._old_programs = {}
        self._inherited_mask = 0
        self._write_config()

    def _read_config(self) -> layout.Config:
        value = layout.Config()
        self._lib.bpf_lookup_elem(self._fds["config"], ctypes.byref(ctypes.c_uint32(0)), ctypes.byref(value))
        return value

    # ---- maps -------------------------------------------------------------

    def _update(self, name: str, key: MapBytes, value: MapBytes) -> None:
        if self._lib.bpf_update_elem(self._fds[name], _pointer(key), _pointer(value), 0) < 0:
            raise _map_error(name, ctypes.get_errno())

    def _delete(self, name: str, key: MapBytes) -> None:
        # A missing key is fine: deletes are idempotent clean-up.
        self._lib.bpf_delete_elem(self._fds[name], _pointer(key))

    def _write_config(self) -> None:
        mask = self._inherited_mask
        for level in self._levels.values():
            mask |= 1 << level
        self._update("config", ctypes.c_uint32(0), layout.Config(levels_mask=mask, events_per_sec=self._events_per_sec,
                                                                 daemon_tgid=os.getpid()))

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
        self._update("sandboxes", ctypes.c_uint64(cgroup.id), value)

    def reset_slot(self, slot: int) -> None:
        zero_counters = (layout.Counters * self._ncpus)()
        zero_rate = (layout.Rate * self._ncpus)()
        self._update("counters", ctypes.c_uint32(slot), zero_counters)
        self._update("rate", ctypes.c_uint32(slot), zero_rate)
        self._update("dns_counters", ctypes.c_uint32(slot), layout.DnsCounters())
        self.reset_escalation(slot)

    def reset_escalation(self, slot: int) -> None:
        self._update("escalation", ctypes.c_uint32(slot), layout.Escalation())

    def escalation_fired(self, slot: int) -> int:
        """0, or the denial count at which the slot's escalation fired."""
        value = layout.Escalation()
        if self._lib.bpf_lookup_elem(self._fds["escalation"], ctypes.byref(ctypes.c_uint32(slot)),
                                     ctypes.byref(value)) < 0:
            return 0
        return int(value.fired)

    def read_counters(self, slot: int) -> CounterTotals:
        per_cpu = (layout.Counters * self._ncpus)()
        if self._lib.bpf_lookup_elem(self._fds["counters"], ctypes.byref(ctypes.c_uint32(slot)), ctypes.byref(per_cpu)) < 0:
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
        self._lib.bpf_lookup_elem(self._fds["dns_counters"], ctypes.byref(ctypes.c_uint32(slot)), ctypes.byref(value))
        return value

    def write_dns_counters(self, slot: int, value: layout.DnsCounters) -> None:
        """Only the daemon writes these (the forwarder decides DNS denials), under its lock."""
        self._update("dns_counters", ctypes.c_uint32(slot), value)

    def set_forwarder(self, slot: int, netns_cookie: int, ports: layout.Forwarder) -> None:
        self._update("dns_forwarders", layout.FwdKey(slot=slot, netns_cookie=netns_cookie), ports)

    def clear_forwarder(self, slot: int, netns_cookie: int) -> None:
        self._delete("dns_forwarders", layout.FwdKey(slot=slot, netns_cookie=netns_cookie))

    def forwarder_keys(self) -> list[tuple[int, int]]:
        """(slot, netns cookie) of every forwarder entry (a restarted daemon clears them)."""
        return [(int(k.slot), int(k.netns_cookie)) for k in self._bpf["dns_forwarders"]]

    def read_name_addrs(self) -> list[tuple[bytes, bytes]]:
        """Every learned address entry (key bytes, value bytes): what a restarted daemon adopts."""
        table = self._bpf[layout.MAP_NAME_ADDRS]
        return [(bytes(k), bytes(v)) for k, v in table.items()]

    def read_global(self, index: int) -> int:
        per_cpu = (ctypes.c_uint64 * self._ncpus)()
        self._lib.bpf_lookup_elem(self._fds["globals"], ctypes.byref(ctypes.c_uint32(index)), ctypes.byref(per_cpu))
        return sum(per_cpu)

    # ---- what the kernel reports -------------------------------------------

    def program_status(self) -> list[tuple[str, str, int, int]]:
        """(name, hook, attached, expected) for every program of this build, as
        the kernel has it: cgroup programs are looked up in each guarded cgroup's
        attached list, links by their pins."""
        rows = []
        for fn, attach_type in self._programs:
            prog_id = self.pins.bpf.object_id(fn.fd)
            attached = expected = 0
            for fd in self._attached.values():
                try:
                    ids = self.pins.bpf.attached_ids(fd, attach_type)
                except FileNotFoundError:
                    continue  # the cgroup was removed (its container ended): nothing to guard there
                expected += 1
                attached += prog_id in ids
            rows.append((fn.name.decode(), "cgroup", attached, expected))
        for pin in sorted(self.pins.build_dir(self.build).glob("link-*")):
            name = pin.name.removeprefix("link-")
            hook = syscall_hook_of(name) or (
                "tracepoint" if name.startswith("tp-") else "raw_tracepoint" if name.startswith("raw-") else "lsm")
            rows.append((name, hook, 1, 1))
        return rows

    # ---- putting back what a sandbox took away ------------------------------

    def restore_pins(self) -> list[Path]:
        """Pin again what was unlinked from bpffs (root in a sandbox can): the
        daemon still holds every fd, but without its pin a link would end
        with the daemon and the next daemon would not find the maps."""
        build_dir = self.pins.build_dir(self.build)
        held = [*self._map_pins.items(), *self.syscalls.pinned(),
                *((build_dir / f"prog-{fn.name.decode()}", fn.fd) for fn, _ in self._programs),
                *((build_dir / f"link-{name}", fd) for name, fd in self._links.items())]
        restored = []
        for path, fd in held:
            if not os.path.lexists(path):
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.pins.bpf.pin(fd, path)
                restored.append(path)
        return restored

    def restore_attachments(self) -> list[tuple[str, int]]:
        """Attach again every program the kernel no longer has on a guarded
        cgroup: a detach a refused bpf() call got through before its caller
        died. (program, cgroup id) for each one put back."""
        restored = []
        for fn, attach_type in self._programs:
            prog_id = self.pins.bpf.object_id(fn.fd)
            for cgroup_id, fd in self._attached.items():
                try:
                    if prog_id in self.pins.bpf.attached_ids(fd, attach_type):
                        continue
                except FileNotFoundError:
                    continue  # the cgroup is gone
                self.pins.bpf.attach(fn.fd, fd, attach_type)
                restored.append((fn.name.decode(), cgroup_id))
        return restored

    # ---- adopting what an earlier daemon left ------------------------------

    def kernel_sandboxes(self) -> dict[int, tuple[int, int, int]]:
        """cgroup id -> (generation, slot, tag) of every sandbox entry in the maps."""
        return {int(key.value): (int(value.generation), int(value.slot), int(value.tag))
                for key, value in self._bpf["sandboxes"].items()}

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
        self._delete("sandboxes", ctypes.c_uint64(cgroup_id))

    def track_processes(self, cgroup: Cgroup) -> int:
        """Tell the kernel which processes a new sandbox holds (the escape
        programs track forks and moves from here on). Returns how many."""
        value = layout.Tracked(sandbox_cgroup_id=cgroup.id, level=cgroup.level)
        count = 0
        for procs in cgroup.path.rglob("cgroup.procs"):
            try:
                pids = procs.read_text().split()
            except OSError:
                continue  # a child cgroup removed meanwhile
            for pid in pids:
                self._update("sandboxed_tasks", ctypes.c_uint32(int(pid)), value)
                count += 1
        return count

    def untrack_processes(self, cgroup_id: int) -> None:
        for key, value in list(self._bpf["sandboxed_tasks"].items()):
            if value.sandbox_cgroup_id == cgroup_id:
                self._delete("sandboxed_tasks", key)

    # ---- attachment -------------------------------------------------------

    def guard(self, cgroup: Cgroup) -> None:
        """Attach every program to the cgroup (once). Call after set_sandbox, so
        that a program never runs for a cgroup whose sandbox entry is missing."""
        if cgroup.id in self._attached:
            return
        self._levels[cgroup.id] = cgroup.level
        self._write_config()
        fd = os.open(cgroup.path, os.O_RDONLY | os.O_DIRECTORY)
        done = []
        try:
            for fn, attach_type in self._programs:
                self._attach(fn.fd, fn.name.decode(), fd, attach_type)
                done.append((fn, attach_type))
        except Exception as exc:
            for fn, attach_type in done:
                self._bpf.detach_func(fn, fd, attach_type)
            os.close(fd)
            del self._levels[cgroup.id]
            self._write_config()
            raise KernelError(f"attaching to {cgroup.path} failed: {exc}") from exc
        self._attached[cgroup.id] = fd

    def _attach(self, prog_fd: int, name: str, cgroup_fd: int, attach_type: int) -> None:
        """In place of an earlier build's program where one is attached (an
        atomic swap), else beside whatever else is attached."""
        for old in self._old_programs.values():
            if name in old:
                try:
                    self.pins.bpf.attach(prog_fd, cgroup_fd, attach_type, replace_fd=old[name])
                    return
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
        self.pins.bpf.attach(prog_fd, cgroup_fd, attach_type)

    def unguard(self, cgroup_id: int) -> None:
        """Detach from the cgroup, then forget its sandbox entry (that order, so
        no program runs without an entry). A removed cgroup detaches by itself."""
        fd = self._attached.pop(cgroup_id, None)
        if fd is not None:
            for fn, attach_type in self._programs:
                with contextlib.suppress(Exception):
                    self._bpf.detach_func(fn, fd, attach_type)
            os.close(fd)
        self._delete("sandboxes", ctypes.c_uint64(cgroup_id))
        self._levels.pop(cgroup_id, None)
        self._write_config()

    def guarded(self) -> list[int]:
        return list(self._attached)

    # ---- events -----------------------------------------------------------

    def events_ring(self) -> EventRing:
        fd = self._bpf["events"].get_fd()
        return EventRing(fd, layout.RINGBUF_BYTES, identity=ring_identity(self.pins.bpf.object_id(fd)))

    def close(self) -> None:
        """Let go of the programs and maps, leaving them attached and pinned:
        enforcement goes on without the daemon (`uninstall` ends it)."""
        for fd in [*self._attached.values(), *self._links.values()]:
            os.close(fd)
        self._attached.clear()
        self._links.clear()
        self.syscalls.close()
        self._bpf.cleanup()


def ring_identity(map_id: int, boot_id_path: Path = BOOT_ID) -> str:
    """Names one ring buffer among all this host has had: the boot and the map's
    id (ids are handed out in turn, reused only after 2^31 maps). A position in the audit
    log means something only for the ring it was read from: after an uninstall
    the pinned ring is a new one, counting from 0 again."""
    return f"{boot_id_path.read_text().strip()[:8]}-{map_id}"


def _manual_attach_bpf() -> type:  # a class made late: importing bcc loads libbcc
    from bcc import BPF

    class ManualAttachBPF(BPF):
        """bcc's BPF without its automatic attachment of tracepoint__,
        raw_tracepoint__ and lsm__ functions (SandboxGuard attaches them as links)."""

        def _trace_autoload(self) -> None:
            return

    return ManualAttachBPF


def uninstall(pin_root: Path, cgroup_paths: list[Path]) -> list[str]:
    """End enforcement left by daemons: detach every build's programs from these
    cgroups, unpin everything. Returns what was removed, for the report."""
    pins = PinDir(pin_root)
    removed = []
    fds = []
    for path in cgroup_paths:
        with contextlib.suppress(OSError):  # a removed cgroup took its programs with it
            fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
    try:
        for build in pins.builds():
            programs = pins.programs(build)
            try:
                pins.retire_build(build, programs, ATTACH_TYPES, fds)
            finally:
                for fd in programs.values():
                    os.close(fd)
            removed.append(f"build {build:08x}")
        removed += [f"maps {name}" for name in pins.layouts()]
        pins.remove_all()
    finally:
        for fd in fds:
            os.close(fd)
    return removed


def tracefs_ready() -> None:
    """bcc reads tracepoint formats from tracefs; mount it if the host has not."""
    if Path("/sys/kernel/tracing/events").is_dir() or Path("/sys/kernel/debug/tracing/events").is_dir():
        return
    mounted = subprocess.run(["mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing"], capture_output=True)
    if mounted.returncode != 0:
        raise KernelError("tracefs is not mounted and could not be mounted at /sys/kernel/tracing")
