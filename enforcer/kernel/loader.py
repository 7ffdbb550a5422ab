"""Compile and load the BPF programs once per daemon, for the exec mode the
kernel allows, and attach the tracepoint, raw tracepoint and LSM programs as
pinnable links; end it all (uninstall). The cgroup programs, named here with
their program and attach types, are attached per sandbox by the guard."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from enforcer.kernel import btf, layout
from enforcer.kernel.errors import KernelError
from enforcer.kernel.pins import PinDir, tracepoint_id
from enforcer.kernel.syscall_hooks import lsm_defines
from enforcer.settings import EXEC_MODE_LSM, EXEC_MODE_TRACEPOINT

# UAPI numbers (stable): enum bpf_prog_type and enum bpf_attach_type.
PROG_CGROUP_SOCK, PROG_CGROUP_DEVICE, PROG_CGROUP_SOCK_ADDR = 9, 15, 18
ATTACH_CGROUP_INET_SOCK_CREATE = 2
ATTACH_CGROUP_DEVICE = 6
ATTACH_CGROUP_INET4_CONNECT, ATTACH_CGROUP_INET6_CONNECT = 10, 11
ATTACH_CGROUP_UDP4_SENDMSG, ATTACH_CGROUP_UDP6_SENDMSG = 14, 15
ATTACH_CGROUP_UDP4_RECVMSG, ATTACH_CGROUP_UDP6_RECVMSG = 19, 20
ATTACH_CGROUP_INET4_GETPEERNAME, ATTACH_CGROUP_INET6_GETPEERNAME = 29, 30
CGROUP_PROGRAMS = {  # name in bpf/*.c -> (program type, attach type)
    "enf_connect4": (PROG_CGROUP_SOCK_ADDR, ATTACH_CGROUP_INET4_CONNECT),
    "enf_connect6": (PROG_CGROUP_SOCK_ADDR, ATTACH_CGROUP_INET6_CONNECT),
    "enf_sendmsg4": (PROG_CGROUP_SOCK_ADDR, ATTACH_CGROUP_UDP4_SENDMSG),
    "enf_sendmsg6": (PROG_CGROUP_SOCK_ADDR, ATTACH_CGROUP_UDP6_SENDMSG),
    "enf_sock_create": (PROG_CGROUP_SOCK, ATTACH_CGROUP_INET_SOCK_CREATE),
    "enf_device": (PROG_CGROUP_DEVICE, ATTACH_CGROUP_DEVICE),
    # DNS redirection: show a redirected socket the resolver it addressed.
    "enf_recvmsg4": (PROG_CGROUP_SOCK_ADDR, ATTACH_CGROUP_UDP4_RECVMSG),
    "enf_recvmsg6": (PROG_CGROUP_SOCK_ADDR, ATTACH_CGROUP_UDP6_RECVMSG),
    "enf_getpeername4": (PROG_CGROUP_SOCK_ADDR, ATTACH_CGROUP_INET4_GETPEERNAME),
    "enf_getpeername6": (PROG_CGROUP_SOCK_ADDR, ATTACH_CGROUP_INET6_GETPEERNAME),
}
ATTACH_TYPES = {name: attach for name, (_, attach) in CGROUP_PROGRAMS.items()}
SOURCE = layout.BPF_DIR / "enforcer.bpf.c"
LSM_LIST = Path("/sys/kernel/security/lsm")


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


def load_build(source: bytes, exec_mode: str, offsets: dict[str, int], pin_defines: dict[str, str],
               pins: PinDir) -> tuple[Any, dict[str, int]]:
    """Compile and load for ``exec_mode``, attach the links; nothing is left
    attached if any step fails."""
    loaded = _manual_attach_bpf()(text=source, cflags=compile_flags(exec_mode, offsets, pin_defines))
    try:
        return loaded, _attach_links(loaded, pins)
    except Exception:
        loaded.cleanup()
        raise

def _attach_links(loaded: Any, pins: PinDir) -> dict[str, int]:
    """Attach the tracepoint, raw tracepoint and LSM programs as links (fds
    that a pin keeps alive). bcc would attach them itself, tracepoints with
    a perf-event ioctl that ends with the process; its automatic attachment
    is off (``_manual_attach_bpf``) and this does it instead. On a failure
    the links made so far are closed."""
    from bcc import BPF
    from bcc.libbcc import lib

    links: dict[str, int] = {}
    module = loaded.module
    try:
        for index in range(lib.bpf_num_functions(module)):
            name = lib.bpf_function_name(module, index).decode()
            if name.startswith("tracepoint__"):
                _, category, event = name.split("__", 2)
                fn = loaded.load_func(name.encode(), BPF.TRACEPOINT)
                links[f"tp-{event}"] = pins.bpf.perf_link(fn.fd, tracepoint_id(category, event))
            elif name.startswith("raw_tracepoint__"):
                fn = loaded.load_func(name.encode(), BPF.RAW_TRACEPOINT)
                links[f"raw-{name.removeprefix('raw_tracepoint__')}"] = _link_fd(
                    lib.bpf_attach_raw_tracepoint(fn.fd, name.removeprefix("raw_tracepoint__").encode()),
                    name)
            elif name.startswith("lsm__"):
                fn = loaded.load_func(name.encode(), BPF.LSM)
                links[name] = _link_fd(lib.bpf_attach_lsm(fn.fd), name)
    except Exception:
        for fd in links.values():
            os.close(fd)
        raise
    return links

def _link_fd(fd: int, name: str) -> int:
    if fd < 0:
        raise KernelError(f"attaching {name} failed: {os.strerror(ctypes.get_errno() or -fd)}")
    return fd


def _manual_attach_bpf() -> type:  # a class made late: importing bcc loads libbcc
    from bcc import BPF

    class ManualAttachBPF(BPF):
        """bcc's BPF without its automatic attachment of tracepoint__,
        raw_tracepoint__ and lsm__ functions (load_build attaches them as links)."""

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
