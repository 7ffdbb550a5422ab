"""cgroup v2 as a filesystem: find the mount, resolve policy targets to cgroup
directories, create and remove cgroups. No BPF here: the CLI uses this too."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from enforcer.policy import PolicyError, Target, TargetKind


class CgroupError(RuntimeError):
    pass


def cgroup2_mount(mounts: str = "/proc/mounts") -> Path:
    """The first cgroup2 mount point (``/sys/fs/cgroup`` on most hosts)."""
    try:
        text = Path(mounts).read_text()
    except OSError as exc:
        raise CgroupError(f"cannot read {mounts}: {exc.strerror}") from exc
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1].replace("\\040", " "))
    raise CgroupError("no cgroup v2 filesystem is mounted (cgroup2 not found in /proc/mounts)")


@dataclass(frozen=True)
class Cgroup:
    path: Path    # absolute, below the cgroup2 mount
    id: int       # the kernel's cgroup id: the directory's inode number on cgroup2
    level: int    # 0 for the root

    def contains(self, other: Cgroup) -> bool:
        return _within(other.path, self.path)

    def still_exists(self) -> bool:
        """False once the cgroup was removed (a new cgroup at the same path has another id)."""
        try:
            return os.stat(self.path).st_ino == self.id
        except FileNotFoundError:
            return False


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def cgroup_at(path: Path, mount: Path | None = None) -> Cgroup:
    mount = mount or cgroup2_mount()
    real = Path(os.path.realpath(path))
    if not _within(real, mount):
        raise CgroupError(f"{path} is not below the cgroup2 mount {mount}")
    if not (real / "cgroup.procs").is_file():
        raise CgroupError(f"{path} is not a cgroup (no cgroup.procs)")
    return Cgroup(path=real, id=os.stat(real).st_ino, level=len(real.relative_to(mount).parts))


def resolve_target(target: Target, mount: Path | None = None) -> Cgroup:
    """The cgroup a policy target names, or PolicyError on the target's field."""
    mount = mount or cgroup2_mount()
    where = f"target.{target.kind.value}"
    if target.kind is TargetKind.CGROUP:
        path = cgroup_path(target.value, mount)
        if not path.exists():
            raise PolicyError(where, f"cgroup {target.value} does not exist")
    elif target.kind is TargetKind.PID:
        path = cgroup_of_pid(int(target.value), mount, where)
    else:
        path = find_container_cgroup(target.value, mount, where)
    try:
        cgroup = cgroup_at(path, mount)
    except CgroupError as exc:
        raise PolicyError(where, str(exc)) from exc
    if cgroup.level == 0:
        raise PolicyError(where, "the root cgroup cannot be a sandbox (it holds the whole host)")
    return cgroup


def cgroup_path(value: str, mount: Path) -> Path:
    """Where a cgroup named as in Target.cgroup is: absolute, or relative to the mount."""
    path = Path(value)
    if not path.is_absolute():
        return mount / path
    if not _within(Path(os.path.realpath(path)), mount):
        # An absolute path written as if cgroup2 were at /sys/fs/cgroup also works.
        relative = _relative_to_any_cgroup_root(path)
        if relative is not None:
            return mount / relative
    return path


def create_target_cgroup(target: Target, mount: Path) -> list[Path]:
    """Make the cgroup a ``create: true`` target names, and its missing parents.
    Returns the directories made, outermost first (what undoing removes)."""
    where = "target.cgroup"
    path = cgroup_path(target.value, mount)
    if not _within(path, mount) or path == mount:
        raise PolicyError(where, f"{target.value} is not below the cgroup2 mount {mount}: it cannot be created")
    missing = [p for p in [path, *path.parents] if _within(p, mount) and not p.exists()]
    made: list[Path] = []
    try:
        for directory in reversed(missing):
            directory.mkdir()
            made.append(directory)
    except OSError as exc:
        remove_created(made)
        raise PolicyError(where, f"cannot create cgroup {directory}: {exc.strerror}") from exc
    return made


def remove_created(made: list[Path]) -> None:
    """Undo create_target_cgroup, innermost first; what is in use stays."""
    for directory in reversed(made):
        try:
            directory.rmdir()
        except OSError:
            return


def _relative_to_any_cgroup_root(path: Path) -> Path | None:
    for root in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if root in path.parents:
            return path.relative_to(root)
    return None


def cgroup_of_pid(pid: int, mount: Path, where: str = "target.pid") -> Path:
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except FileNotFoundError as exc:
        raise PolicyError(where, f"no process with pid {pid}") from exc
    except OSError as exc:
        raise PolicyError(where, f"cannot read /proc/{pid}/cgroup: {exc.strerror}") from exc
    for line in lines:
        if line.startswith("0::"):
            return mount / line[3:].lstrip("/")
    raise PolicyError(where, f"process {pid} is not in a cgroup v2 hierarchy")


# How runtimes name a container's cgroup (leaf directory), by driver:
#   docker, cgroupfs driver:       /docker/<id>
#   docker, systemd driver:        /system.slice/docker-<id>.scope
#   containerd/Kubernetes systemd: /kubepods.slice/.../cri-containerd-<id>.scope
#   containerd/Kubernetes cgroupfs:/kubepods/<qos>/pod<uid>/<id>
#   CRI-O:                          .../crio-<id>.scope
#   podman:                         .../libpod-<id>.scope
_CONTAINER_LEAF = re.compile(r"^(?:(?:docker|cri-containerd|crio|libpod)-)?([0-9a-f]{12,64})(?:\.scope)?$")
_MAX_WALK_DEPTH = 12


def find_container_cgroup(container_id: str, mount: Path, where: str = "target.container") -> Path:
    matches: list[Path] = []
    for dirpath, dirnames, _ in os.walk(mount):
        depth = len(Path(dirpath).relative_to(mount).parts)
        if depth >= _MAX_WALK_DEPTH:
            dirnames[:] = []
            continue
        for name in dirnames:
            match = _CONTAINER_LEAF.match(name)
            if match and match.group(1).startswith(container_id):
                matches.append(Path(dirpath) / name)
    # A runtime may keep a nested cgroup for the same id (e.g. crio-conmon); take the outermost.
    outermost = [m for m in matches if not any(o in m.parents for o in matches)]
    ids = {_container_id_of(m.name) for m in outermost}
    if not outermost:
        raise PolicyError(where, f"no cgroup found for container {container_id} (docker, containerd, CRI-O, podman)")
    if len(ids) > 1:
        raise PolicyError(where, f"container id {container_id} is ambiguous: it matches {len(ids)} containers")
    if len(outermost) > 1:
        raise PolicyError(where, f"container {container_id} has {len(outermost)} cgroups: {', '.join(map(str, outermost))}")
    return outermost[0]


def _container_id_of(name: str) -> str:
    match = _CONTAINER_LEAF.match(name)
    return match.group(1) if match else name


def create_cgroup(path: Path) -> Cgroup:
    path.mkdir(parents=True, exist_ok=False)
    return cgroup_at(path)


def remove_cgroup(path: Path, timeout: float = 5.0) -> None:
    """Kill whatever still runs in the cgroup (and below), then remove it, leaves first."""
    if not path.exists():
        return
    kill = path / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
    deadline = time.monotonic() + timeout
    for dirpath, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        while True:
            try:
                os.rmdir(dirpath)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def a_process_in(cgroup: Path) -> int | None:
    """Some process of the cgroup or below it (a container's processes share
    its root and mounts); None when it is empty."""
    for dirpath, _, _ in os.walk(cgroup):
        try:
            pids = (Path(dirpath) / "cgroup.procs").read_text().split()
        except OSError:
            continue
        if pids:
            return int(pids[0])
    return None


def move_pid(pid: int, cgroup: Path) -> None:
    """Move a process (0: the caller) into a cgroup."""
    (cgroup / "cgroup.procs").write_text(str(pid))


def write_control(cgroup: Cgroup, name: str, value: str) -> None:
    """Write a cgroup control file (cgroup.freeze, cgroup.kill)."""
    (cgroup.path / name).write_text(value)
