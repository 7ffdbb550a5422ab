"""Where the syscall programs (bpf/syscall.bpf.c) are attached: only to the
syscalls some policy refuses, so that every other syscall of every task pays
nothing.

enf_sys_enter goes on the entry tracepoint of each refused syscall
(``syscalls:sys_enter_<name>``); while some policy refuses by default, the one
raw ``sys_enter`` attachment, which sees every syscall, replaces them all (both
at once would judge a syscall twice). Each attachment is a link pinned in the
build's directory: it outlives the daemon, and the next build's daemon attaches
its own before retiring this build's, as with the other programs.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from enforcer.kernel.pins import PinDir, PinError, tracepoint_id
from enforcer.policy.syscalls import syscall_table

# Link names (pinned as link-<name> in the build's directory), apart from the
# build's own tracepoint links (tp-sys_enter_execve captures argv for exec rules).
RAW_LINK = "syscall-every"
# Refused with EPERM by the BPF-LSM hook that stands for them in the lsm mode
# (bpf/syscall.bpf.c): no tracepoint for them there.
LSM_SYSCALLS = frozenset({"bpf", "perf_event_open", "mount", "ptrace", "process_vm_readv", "process_vm_writev",
                          "init_module", "finit_module", "kexec_load", "kexec_file_load", "socket", "socketpair"})


def lsm_defines(lsm: bool) -> dict[str, str]:
    """ENF_NR_<NAME> for each syscall an LSM hook stands for, and in the lsm
    mode ENF_LSM_SYSCALL(nr), true for exactly those: the C side's only list."""
    table = syscall_table()
    numbers = {name: table[name] for name in sorted(LSM_SYSCALLS)}
    defines = {f"ENF_NR_{name.upper()}": str(nr) for name, nr in numbers.items()}
    if lsm:
        defines["ENF_LSM_SYSCALL(nr)"] = "(" + " || ".join(f"(nr) == {nr}" for nr in numbers.values()) + ")"
    return defines


def tracepoint_link(name: str) -> str:
    return f"syscall-{name}"


def syscall_hook_of(link: str) -> str | None:
    """What a syscall link is attached to (None: not a syscall link)."""
    if link == RAW_LINK:
        return "raw_tracepoint"
    return "tracepoint" if link.startswith("syscall-") else None


class SyscallHooks:
    def __init__(self, loaded: Any, pins: PinDir, build: int, lsm: bool = False) -> None:
        from bcc import BPF
        from bcc.libbcc import lib

        self._lib = lib
        self._pins = pins
        self._build = build
        self._fn = loaded.load_func(b"enf_sys_enter", BPF.TRACEPOINT)
        self._raw_fn = loaded.load_func(b"enf_raw_sys_enter", BPF.RAW_TRACEPOINT)
        self._links: dict[str, int] = {}  # link name -> open fd (also pinned)
        self._by_lsm = LSM_SYSCALLS if lsm else frozenset()
        self._tracepoints: dict[str, bool] = {}  # syscall name -> does sys_enter_<name> exist

    def missing(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` this kernel has no entry tracepoint for (not built
        in). Looked up in tracefs once per name: it does not change while the
        kernel runs, and every apply asks."""
        return [name for name in names if not self._has_tracepoint(name)]

    def _has_tracepoint(self, name: str) -> bool:
        known = self._tracepoints.get(name)
        if known is None:
            try:
                tracepoint_id("syscalls", f"sys_enter_{name}")
                known = True
            except PinError:
                known = False
            self._tracepoints[name] = known
        return known

    def refusals(self, names: Iterable[str], every: bool) -> list[tuple[str, str]]:
        """(syscall, how it is refused here) for the refused ``names``: "eperm"
        (a BPF-LSM hook), "kill" (SIGKILL at its entry; the call runs) or "none"
        (not built); "*" stands for every other one when ``every``."""
        def how(name: str) -> str:
            if not every and not self._has_tracepoint(name):
                return "none"
            return "eperm" if name in self._by_lsm else "kill"
        rows = [(name, how(name)) for name in sorted(names)]
        return rows + ([("*", "kill")] if every else [])

    def pinned(self) -> list[tuple[Path, int]]:
        """(pin, fd) of every link attached now."""
        return [(self._pins.build_dir(self._build) / f"link-{link}", fd) for link, fd in self._links.items()]

    @property
    def attached(self) -> set[str]:
        return set(self._links)

    def attach(self, names: Iterable[str], every: bool) -> None:
        """Make sure these syscalls are judged (all of them if ``every``); detaches
        nothing. A syscall this kernel does not build has no tracepoint: skipped."""
        names = set(names) - self._by_lsm
        wanted = [RAW_LINK] if every else [tracepoint_link(n) for n in names - set(self.missing(names))]
        if RAW_LINK in self._links:
            return  # already judging every syscall
        for link in wanted:
            if link not in self._links:
                self._links[link] = self._open(link)

    def keep_only(self, names: Iterable[str], every: bool) -> None:
        """Detach what no policy needs any more (after the switch that stopped needing it)."""
        names = set(names) - self._by_lsm
        wanted = {RAW_LINK} if every else {tracepoint_link(n) for n in names}
        self.attach(names, every)  # never a moment with fewer hooks than needed
        for link in [link for link in self._links if link not in wanted]:
            (self._pins.build_dir(self._build) / f"link-{link}").unlink(missing_ok=True)
            os.close(self._links.pop(link))

    def _open(self, link: str) -> int:
        if link == RAW_LINK:
            fd = self._lib.bpf_attach_raw_tracepoint(self._raw_fn.fd, b"sys_enter")
            if fd < 0:
                raise PinError(f"attaching the raw sys_enter tracepoint failed: {os.strerror(ctypes.get_errno() or -fd)}")
        else:
            fd = self._pins.bpf.perf_link(self._fn.fd,
                                          tracepoint_id("syscalls", f"sys_enter_{link.removeprefix('syscall-')}"))
        try:
            self._pins.bpf.pin(fd, self._pins.build_dir(self._build) / f"link-{link}")
        except Exception:
            os.close(fd)
            raise
        return int(fd)

    def close(self) -> None:
        """Let go of the fds; the pins keep the links (and the judging) alive."""
        for fd in self._links.values():
            os.close(fd)
        self._links.clear()
