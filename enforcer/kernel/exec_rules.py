"""Encode an exec policy into the exec_ids hash and the exec_paths LPM trie.

Every entry is resolved when the policy is applied to the identity (device +
inode) of the file or directory it names, symlinks followed: the kernel then
judges the file that runs, whatever name it was called by. The same entries also
go into a path trie, used only where no file is left to judge (the path of a #!
script) and to refuse a denied name whose file was replaced after the apply.

The dynamic loader runs any ELF it is given (``ld-linux-x86-64.so.2 /tmp/x``),
so its identities are refused unless an allow entry names the loader file
itself: a directory entry such as ``/usr/lib/`` does not let it run.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import struct
import threading
from dataclasses import dataclass, field

from enforcer.kernel import layout
from enforcer.kernel.rootfs import HOST, RootFs
from enforcer.policy import ExecPolicy, PolicyError, Verdict

LOADER_DIRS = ("/lib64", "/lib", "/usr/lib64", "/usr/lib")
# OCI runtimes re-execute their own binary inside the container's cgroup while
# setting the container up (runc 1.1: its init through a read-only bind mount of
# /proc/self/exe, seen as /dev/fd/N), before the hook can add the container.
RUNTIMES = ("runc", "crun", "youki", "runsc")
RUNTIME_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_LOADER_NAME = "ld-*.so*"  # in each of LOADER_DIRS, and one level below /lib and /usr/lib

Identity = tuple[int, int]  # (kernel dev, inode)


def kernel_dev(st_dev: int) -> int:
    """A userspace dev_t in the kernel's own encoding (as in super_block.s_dev)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


class SuperBlocks:
    """Maps stat()'s st_dev to the device of the file's super_block, which is
    what the kernel side compares. They differ where a file system reports a
    made-up st_dev: overlayfs with layers on different file systems (a per-layer
    pseudo device; found running the exec tests on an overlay root) and btrfs
    subvolumes. The mountinfo of the root's mount namespace gives the
    super_block's device of the mount a file is on; one st_dev always belongs to
    one super_block, so each st_dev is looked up once."""

    def __init__(self, rootfs: RootFs = HOST) -> None:
        self._rootfs = rootfs
        self._known: dict[int, int] = {}
        self._mounts: dict[int, int] | None = None

    def identity(self, path: str, st: os.stat_result) -> Identity:
        dev = self._known.get(st.st_dev)
        if dev is None:
            dev = self._lookup(path) or kernel_dev(st.st_dev)
            self._known[st.st_dev] = dev
        return (dev, st.st_ino)

    def _lookup(self, path: str) -> int | None:
        mnt_id = self._rootfs.mount_id(path)
        return None if mnt_id is None else self._mount_devices().get(mnt_id)

    def _mount_devices(self) -> dict[int, int]:
        if self._mounts is None:
            self._mounts = {}
            with open(self._rootfs.mountinfo) as lines:
                for line in lines:
                    fields = line.split(maxsplit=3)
                    major, minor = fields[2].split(":")
                    self._mounts[int(fields[0])] = (int(major) << 20) | int(minor)
        return self._mounts


def identity_of(path: str) -> Identity:
    """The identity the kernel sees for ``path`` (symlinks followed)."""
    return SuperBlocks().identity(path, os.stat(path))


@dataclass
class CompiledExec:
    ids: dict[Identity, int] = field(default_factory=dict)  # identity -> layout.EXEC_* bits
    paths: dict[bytes, int] = field(default_factory=dict)   # entry text (file entries end in NUL) -> verdict

    def merge(self, other: CompiledExec) -> None:
        """Add the files of another root, compiled from the same policy (so the
        same path texts). Roots are separate file systems: their identities differ."""
        for identity, bits in other.ids.items():
            self.ids[identity] = self.ids.get(identity, 0) | bits
        self.paths.update(other.paths)


def loader_identities(devices: SuperBlocks | None = None, rootfs: RootFs = HOST) -> dict[Identity, str]:
    """The dynamic loaders of a root (the host's, or a container's), each with a path to it."""
    return _regular_files(_loader_candidates(rootfs), devices or SuperBlocks(rootfs), rootfs)


def _regular_files(paths: list[str], devices: SuperBlocks, rootfs: RootFs) -> dict[Identity, str]:
    """The identities of those of ``paths`` that are regular files, each with its first path."""
    found: dict[Identity, str] = {}
    for path in paths:
        try:
            st = rootfs.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.setdefault(devices.identity(path, st), path)
    return found


def _loader_candidates(rootfs: RootFs) -> list[str]:
    """Names matching _LOADER_NAME, listed inside the root without leaving it."""
    candidates = []
    for directory in LOADER_DIRS:
        names = rootfs.listdir(directory)
        candidates += [f"{directory}/{n}" for n in names if fnmatch.fnmatch(n, _LOADER_NAME)]
        if directory in ("/lib", "/usr/lib"):
            for sub in names:
                candidates += [f"{directory}/{sub}/{n}" for n in rootfs.listdir(f"{directory}/{sub}")
                               if fnmatch.fnmatch(n, _LOADER_NAME)]
    return candidates


def _loader_dirs_state() -> tuple[tuple[str, int], ...]:
    """The modification times of the loader directories and their subdirectories:
    installing, replacing or removing a loader changes one of them."""
    state = []
    for root in LOADER_DIRS:
        try:
            state.append((root, os.stat(root).st_mtime_ns))
            with os.scandir(root) as entries:
                state += [(e.path, e.stat(follow_symlinks=False).st_mtime_ns)
                          for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
    return tuple(state)


class _LoaderCache:
    """Globbing the loader directories costs ~3 ms; checking that none changed
    costs ~0.15 ms. Every apply of an exec policy needs the loaders."""

    def __init__(self) -> None:
        self._state: tuple[tuple[str, int], ...] | None = None
        self._found: dict[Identity, str] = {}
        self._lock = threading.Lock()

    def get(self, devices: SuperBlocks) -> dict[Identity, str]:
        state = _loader_dirs_state()
        with self._lock:
            if state != self._state:
                self._found, self._state = loader_identities(devices), state
            return self._found


_loaders = _LoaderCache()


def runtime_identities(directories: tuple[str, ...] = RUNTIME_DIRS) -> dict[Identity, str]:
    """The host's OCI runtime binaries, each with a path to it. Allowed in every
    exec allowlist: a runtime only starts programs, and each of those is judged."""
    return _regular_files([f"{d}/{name}" for d in directories for name in RUNTIMES], SuperBlocks(), HOST)


def allow_runtimes(compiled: CompiledExec, directories: tuple[str, ...] = RUNTIME_DIRS) -> None:
    """Add the host's runtimes, unless an entry denies that very file."""
    for identity in runtime_identities(directories):
        bits = compiled.ids.get(identity, 0)
        if not bits & layout.EXEC_FILE_DENY:
            compiled.ids[identity] = bits | layout.EXEC_FILE_ALLOW


def compile_exec(policy: ExecPolicy, rootfs: RootFs = HOST, missing_ok: bool = False) -> CompiledExec:
    """The policy's entries as files of ``rootfs`` (a container's policy names
    the container's files). Raises PolicyError naming the entry when it cannot
    be resolved; with ``missing_ok`` an entry that does not exist in this root
    is left out (it names a file of the containers the root is only a parent of)."""
    compiled = CompiledExec()
    devices = SuperBlocks(rootfs)
    deny_texts: set[bytes] = set()
    for verdict, entries, where in ((Verdict.ALLOW, policy.allow, "exec.allow"), (Verdict.DENY, policy.deny, "exec.deny")):
        for index, entry in enumerate(entries):
            is_dir = entry.endswith("/")
            text = entry.encode() if is_dir else entry.encode() + b"\0"
            compiled.paths.setdefault(text, layout.VERDICT_ALLOW)
            if verdict is Verdict.DENY:
                deny_texts.add(text)
            st = _resolve(entry, is_dir, f"{where}[{index}]", rootfs, missing_ok)
            if st is None:
                continue
            if is_dir:
                bit = layout.EXEC_DIR_ALLOW if verdict is Verdict.ALLOW else layout.EXEC_DIR_DENY
            else:
                bit = layout.EXEC_FILE_ALLOW if verdict is Verdict.ALLOW else layout.EXEC_FILE_DENY
            identity = devices.identity(entry, st)
            compiled.ids[identity] = compiled.ids.get(identity, 0) | bit
    for text in compiled.paths:
        if _covered_by(text, deny_texts):
            compiled.paths[text] = layout.VERDICT_DENY
    loaders = _loaders.get(devices) if rootfs.is_host else loader_identities(devices, rootfs)
    for identity in loaders:
        if not compiled.ids.get(identity, 0) & layout.EXEC_FILE_ALLOW:
            compiled.ids[identity] = compiled.ids.get(identity, 0) | layout.EXEC_FILE_DENY
    return compiled


def _resolve(entry: str, is_dir: bool, where: str, rootfs: RootFs, missing_ok: bool) -> os.stat_result | None:
    try:
        st = rootfs.stat(entry)
    except NotADirectoryError:
        raise PolicyError(where, f"{entry} ends with '/' but is not a directory" if is_dir else
                                 f"cannot resolve {entry}: a component of it is not a directory") from None
    except FileNotFoundError:
        if missing_ok:
            return None
        raise PolicyError(where, f"{entry} does not exist {rootfs.where} (exec entries are resolved to files when "
                                 "the policy is applied)") from None
    except OSError as exc:
        raise PolicyError(where, f"cannot resolve {entry}: {exc.strerror}") from None
    if is_dir and not stat.S_ISDIR(st.st_mode):
        raise PolicyError(where, f"{entry} ends with '/' but is not a directory")
    if not is_dir and stat.S_ISDIR(st.st_mode):
        raise PolicyError(where, f"{entry} is a directory: end it with '/' to cover the files below it")
    if not is_dir and not stat.S_ISREG(st.st_mode):
        raise PolicyError(where, f"{entry} is not a regular file")
    return st


def _covered_by(text: bytes, deny_texts: set[bytes]) -> bool:
    """Is the entry itself denied, or below a denied directory entry?"""
    slash = ord("/")
    return text in deny_texts or any(text[i - 1] == slash and text[:i] in deny_texts for i in range(1, len(text)))


# Packed straight to bytes, as in encode.py; tests/unit/test_exec_rules.py checks
# them against the ctypes mirror.
_ID_KEY = struct.Struct("<IIQ")
_ID_VALUE = struct.Struct("<I")
_PATH_HEAD = struct.Struct("<I")


def id_key_bytes(generation: int, identity: Identity) -> bytes:
    return _ID_KEY.pack(generation, identity[0], identity[1])


def path_key_bytes(generation: int, text: bytes) -> bytes:
    return (
        _PATH_HEAD.pack(32 + 8 * len(text))
        + generation.to_bytes(4, "big")
        + text.ljust(layout.PATH_MAX, b"\0")
    )


def pack_exec(compiled: CompiledExec, generation: int) -> dict[str, list[tuple[bytes, bytes]]]:
    return {
        layout.MAP_EXEC_IDS: [(id_key_bytes(generation, ident), _ID_VALUE.pack(bits)) for ident, bits in compiled.ids.items()],
        layout.MAP_EXEC_PATHS: [(path_key_bytes(generation, text), bytes([verdict]))
                                for text, verdict in compiled.paths.items()],
    }
