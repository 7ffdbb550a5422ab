"""What the daemon leaves in bpffs so that enforcement outlives it.

    <root>/active             array[1]: the build whose programs act (layout-free)
    <root>/maps-<layout>/...  the state maps, one directory per map layout
    <root>/build-<id>/...     one loaded build: prog-<name> and link-<name>

cgroup programs stay attached to their cgroups by themselves once attached
(BPF_PROG_ATTACH holds them); tracepoint, raw tracepoint and LSM attachments are
links, which live as long as a pin holds them. A daemon that stops (or is
killed) therefore leaves every sandbox guarded. The next one swaps its cgroup
programs in for the old ones, one atomic replace per cgroup and hook
(BPF_F_REPLACE: each call runs the old program or the new, never both or
neither), attaches its tracepoint programs beside the old ones, makes them the
active ones with one map write, and retires the old build.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import platform
import re
import secrets
import shutil
import struct
import subprocess
from pathlib import Path

from enforcer.kernel import layout

BPF_F_ALLOW_MULTI = 2
BPF_F_REPLACE = 4
BPF_PERF_EVENT = 41  # enum bpf_attach_type: a link from a BPF program to a perf event
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
_MAP_DECLARATION = re.compile(r"^(ENF_STATE_TABLE\(.*|struct events_table_t events.*)$", re.M)


class PinError(RuntimeError):
    pass


def bpffs_root(mounts: str = "/proc/mounts") -> Path:
    """Where bpffs is mounted; mounted at /sys/fs/bpf if it is not."""
    for line in Path(mounts).read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "bpf":
            return Path(fields[1])
    target = Path("/sys/fs/bpf")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "bpf", "bpf", str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        raise PinError(f"bpffs is not mounted and mounting it at {target} failed: {done.stderr.strip()}")
    return target


def layout_id() -> str:
    """Names the state maps' layout: the shared header and every pinned map's
    declaration. Builds with the same id can share (adopt) the pinned maps."""
    digest = hashlib.sha256((layout.BPF_DIR / "enforcer.h").read_bytes())
    for source in sorted(layout.BPF_DIR.glob("*.bpf.*")):
        for declaration in _MAP_DECLARATION.findall(source.read_text()):
            digest.update(declaration.encode())
    return digest.hexdigest()[:16]


class _AttachOpts(ctypes.Structure):
    """libbpf's struct bpf_prog_attach_opts as of libbpf 1.0 (sz lets newer ones read it)."""

    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint), ("replace_prog_fd", ctypes.c_int)]


class _Libbpf:
    """The few bpf(2) commands bcc's Python API lacks, through libbpf (which
    libbcc itself is linked against)."""

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise PinError(f"libbpf.so.1 not found ({exc}); install libbpf1") from exc
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long

    def _check(self, result: int, what: str) -> int:
        if result < 0:
            err = ctypes.get_errno() or -result
            raise OSError(err, f"{what}: {os.strerror(err)}")
        return result

    def pin(self, fd: int, path: Path) -> None:
        self._check(self.lib.bpf_obj_pin(fd, str(path).encode()), f"pinning {path}")

    def get(self, path: Path) -> int:
        return self._check(self.lib.bpf_obj_get(str(path).encode()), f"opening {path}")

    def attach(self, prog_fd: int, cgroup_fd: int, attach_type: int, replace_fd: int = -1) -> None:
        """BPF_F_ALLOW_MULTI; with ``replace_fd``, one atomic swap for that
        program (ENOENT when it is not attached there)."""
        opts = _AttachOpts(ctypes.sizeof(_AttachOpts), BPF_F_ALLOW_MULTI | (BPF_F_REPLACE if replace_fd >= 0 else 0),
                           replace_fd if replace_fd >= 0 else 0)
        self._check(self.lib.bpf_prog_attach_opts(prog_fd, cgroup_fd, attach_type, ctypes.byref(opts)), "attaching")

    def detach(self, prog_fd: int, cgroup_fd: int, attach_type: int) -> None:
        self._check(self.lib.bpf_prog_detach2(prog_fd, cgroup_fd, attach_type), "detaching")

    def object_id(self, fd: int) -> int:
        """The kernel's id of a program or map: unique among this boot's objects."""
        info = ctypes.create_string_buffer(256)  # struct bpf_prog_info and bpf_map_info both start: type, id
        size = ctypes.c_uint32(len(info))
        self._check(self.lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)), "reading object info")
        return int(struct.unpack_from("<I", info, 4)[0])

    def attached_ids(self, cgroup_fd: int, attach_type: int) -> set[int]:
        """Ids of the programs the kernel has attached to the cgroup at this hook."""
        ids = (ctypes.c_uint32 * 64)()
        count = ctypes.c_uint32(64)
        flags = ctypes.c_uint32()
        self._check(self.lib.bpf_prog_query(cgroup_fd, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(count)),
                    "querying attached programs")
        return set(ids[:count.value])

    def perf_link(self, prog_fd: int, tracepoint_id: int) -> int:
        """A pinnable link from a tracepoint program to a perf event on the
        tracepoint (bcc attaches with an ioctl, which dies with the process)."""
        number = _PERF_EVENT_OPEN.get(platform.machine())
        if number is None:
            raise PinError(f"perf_event_open: unknown syscall number on {platform.machine()}")
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("IIQQ", attr, 0, PERF_TYPE_TRACEPOINT, 128, tracepoint_id, 1)
        perf_fd = self._check(self.libc.syscall(number, attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC), "perf_event_open")
        try:
            return self._check(self.lib.bpf_link_create(prog_fd, perf_fd, BPF_PERF_EVENT, None), "bpf_link_create")
        finally:
            os.close(perf_fd)  # the link holds the perf event


class PinDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bpf = _Libbpf()

    @property
    def active_path(self) -> Path:
        return self.root / "active"

    def maps_dir(self, layout_name: str) -> Path:
        return self.root / f"maps-{layout_name}"

    def build_dir(self, build: int) -> Path:
        return self.root / f"build-{build:08x}"

    def layouts(self) -> list[str]:
        return sorted(p.name.removeprefix("maps-") for p in self._entries() if p.name.startswith("maps-"))

    def builds(self) -> list[int]:
        return sorted(int(p.name.removeprefix("build-"), 16) for p in self._entries() if p.name.startswith("build-"))

    def _entries(self) -> list[Path]:
        return list(self.root.iterdir()) if self.root.is_dir() else []

    def new_build(self) -> int:
        """An id no pinned build has (the active one among them; 0 means none)."""
        taken = {*self.builds(), 0}
        while True:
            build = secrets.randbits(32)
            if build not in taken:
                return build

    def pin_build(self, build: int, programs: dict[str, int], links: dict[str, int]) -> None:
        """Pinned before anything of the build is attached: a daemon that dies
        half-way leaves a build the next one can find and retire."""
        directory = self.build_dir(build)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, fd in programs.items():
            self.bpf.pin(fd, directory / f"prog-{name}")
        for name, fd in links.items():
            self.bpf.pin(fd, directory / f"link-{name}")

    def programs(self, build: int) -> dict[str, int]:
        """Open fds of a pinned build's cgroup programs, by name (the caller closes them)."""
        return {pin.name.removeprefix("prog-"): self.bpf.get(pin) for pin in sorted(self.build_dir(build).glob("prog-*"))}

    def retire_build(self, build: int, programs: dict[str, int], attach_types: dict[str, int],
                     cgroup_fds: list[int]) -> None:
        """Detach the build's cgroup programs (open fds, from ``programs``) from
        these cgroups and drop its pins (which detaches its links). Detaching
        what is not attached is fine."""
        for name, prog_fd in programs.items():
            attach_type = attach_types.get(name)
            if attach_type is None:
                continue
            for cgroup_fd in cgroup_fds:
                try:
                    self.bpf.detach(prog_fd, cgroup_fd, attach_type)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.EBADF):
                        raise
        shutil.rmtree(self.build_dir(build), ignore_errors=True)

    def remove_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def tracepoint_id(category: str, event: str) -> int:
    for base in (Path("/sys/kernel/tracing/events"), Path("/sys/kernel/debug/tracing/events")):
        path = base / category / event / "id"
        if path.exists():
            return int(path.read_text())
    raise PinError(f"tracepoint {category}:{event} not found in tracefs")
