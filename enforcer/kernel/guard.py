"""The loaded build and its attachments: compiles and loads once (through
enforcer.kernel.loader), attaches the cgroup programs to each sandbox's cgroup
and takes them off, makes this build the acting one, and reports and restores
what the kernel has attached. Map reads and writes are ``maps``
(enforcer.kernel.maps); the syscall hooks are ``syscalls``."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from enforcer.cgroupfs import Cgroup
from enforcer.kernel import btf, devices, layout
from enforcer.kernel.errors import KernelError, LayoutChanged, MapFull
from enforcer.kernel.loader import (
    ATTACH_TYPES,
    CGROUP_PROGRAMS,
    LSM_LIST,
    bpf_lsm_available,
    bpf_source,
    default_exec_mode,
    load_build,
)
from enforcer.kernel.maps import CounterTotals, KernelMaps, SandboxState
from enforcer.kernel.pins import PinDir, layout_id
from enforcer.kernel.ringbuf import EventRing
from enforcer.kernel.syscall_hooks import SyscallHooks, syscall_hook_of
from enforcer.settings import EXEC_MODE_AUTO, EXEC_MODE_LSM, EXEC_MODE_TRACEPOINT, EXEC_MODES

__all__ = ["CounterTotals", "KernelError", "LayoutChanged", "MapFull", "SandboxGuard", "SandboxState"]

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


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
            self._bpf, self._links = load_build(source, chosen, offsets, pin_defines, self.pins)
        except Exception as exc:
            if chosen != EXEC_MODE_LSM:
                raise
            if exec_mode == EXEC_MODE_LSM:
                raise KernelError(f"exec mode lsm: the BPF-LSM program does not load here: {exc}") from exc
            # BPF-LSM listed but not loadable (lockdown, no BTF for it): the fallback, said out loud.
            self.lsm_unavailable = str(exc)
            chosen = EXEC_MODE_TRACEPOINT
            self._bpf, self._links = load_build(source, chosen, offsets, pin_defines, self.pins)
        self.exec_mode = chosen
        self._programs = [(self._bpf.load_func(name, prog_type, None, attach_type), attach_type)
                          for name, (prog_type, attach_type) in CGROUP_PROGRAMS.items()]
        self.pins.pin_build(self.build, {fn.name.decode(): fn.fd for fn, _ in self._programs}, self._links)
        # Earlier builds' programs (open fds, by build): this one's replace them, then retire them.
        self._old_programs = {build: self.pins.programs(build) for build in self.pins.builds() if build != self.build}
        self._attached: dict[int, int] = {}  # cgroup id -> open fd of the cgroup directory
        self._levels: dict[int, int] = {}    # cgroup id -> level
        self.maps = KernelMaps(self._bpf, lib, len(get_possible_cpus()))
        self._events_per_sec = events_per_sec
        # Until this build is active, the levels the old build searches stay searched.
        self._inherited_mask = self.maps.read_config().levels_mask if self.adopted else 0
        self._write_config()
        self.syscalls = SyscallHooks(self._bpf, self.pins, self.build, lsm=self.exec_mode == EXEC_MODE_LSM)
        # Every map pin this build relies on, with the fd that can pin it again.
        self._map_pins = {self.pins.active_path: self._bpf[layout.MAP_ACTIVE].get_fd()} | {
            pin: self._bpf[pin.name].get_fd() for pin in sorted(maps_dir.iterdir())}
        self.gpu_majors = devices.gpu_majors()
        for major in self.gpu_majors:
            self.maps.mark_gpu_major(major)

    def activate(self) -> None:
        """Make this build's tracepoint and LSM programs the ones that act (one
        map write), then retire every other build: detach what is left of its
        cgroup programs and drop its pins. Call once the adopted sandboxes'
        cgroup programs are swapped for this build's (guard)."""
        self.maps.set_active(self.build)
        for build, programs in self._old_programs.items():
            try:
                self.pins.retire_build(build, programs, ATTACH_TYPES, list(self._attached.values()))
            finally:
                for fd in programs.values():
                    os.close(fd)
        self._old_programs = {}
        self._inherited_mask = 0
        self._write_config()

    def _write_config(self) -> None:
        mask = self._inherited_mask
        for level in self._levels.values():
            mask |= 1 << level
        self.maps.write_config(mask, self._events_per_sec)

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
        self.maps.forget_sandbox(cgroup_id)
        self._levels.pop(cgroup_id, None)
        self._write_config()

    def guarded(self) -> list[int]:
        return list(self._attached)

    # ---- events -----------------------------------------------------------

    def events_ring(self) -> EventRing:
        fd = self._bpf[layout.MAP_EVENTS].get_fd()
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
