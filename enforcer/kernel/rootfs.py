"""Looking files up inside another root: a container's, as its processes see it.

An exec entry of a container's policy names the container's file: ``/bin/sh``
is the image's shell, not the host's. Going through ``/proc/<pid>/root`` is not
enough: a symlink inside the image (``/bin/sh -> /usr/bin/dash``, or ``-> /``
tricks in a hostile image) would be followed in the daemon's own root. Every
lookup here is ``openat2(RESOLVE_IN_ROOT)`` from a descriptor of the root, so
symlinks and ``..`` resolve as they would inside the container (Linux 5.6+).

The kernel compares a file's super_block device, which ``stat()`` may not report
(overlayfs with layers on different file systems, btrfs subvolumes): the device
is read from the mountinfo of the mount namespace the root belongs to.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat as stat_module

_OPENAT2 = {"x86_64": 437, "aarch64": 437}
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class RootFs:
    """A root directory (``/`` for the host: HOST) and the mountinfo that describes it."""

    def __init__(self, root: str = "/", mountinfo: str = "/proc/self/mountinfo", name: str | None = None) -> None:
        self.root = root
        self.mountinfo = mountinfo
        self.name = name  # whose root it is, for messages (None: the target container's)
        # The host's lookups are plain opens: only another root needs a descriptor to resolve in.
        self.fd = None if root == "/" else os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    @classmethod
    def of_process(cls, pid: int) -> RootFs:
        """The root and mount namespace of a process (a container's init)."""
        return cls(f"/proc/{pid}/root", f"/proc/{pid}/mountinfo")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)

    def __enter__(self) -> RootFs:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def is_host(self) -> bool:
        return self.root == "/"

    @property
    def where(self) -> str:
        """Where lookups happen, for messages."""
        if self.is_host:
            return "on this host"
        return f"in the root filesystem of {self.name}" if self.name else "in the container's root filesystem"

    def open_path(self, path: str) -> int:
        """An O_PATH descriptor of ``path`` looked up inside this root (symlinks
        followed, inside it). Raises OSError as open() would."""
        if self.fd is None:
            return os.open(path, os.O_PATH | os.O_CLOEXEC)
        number = _OPENAT2.get(platform.machine())
        if number is None:
            raise OSError(errno.ENOSYS, f"openat2: unknown syscall number on {platform.machine()}")
        how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        fd = _libc.syscall(number, self.fd, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return int(fd)

    def stat(self, path: str) -> os.stat_result:
        if self.fd is None:
            return os.stat(path)  # one syscall: an apply stats every exec entry
        fd = self.open_path(path)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def mount_id(self, path: str) -> int | None:
        """The id of the mount ``path`` is on (as mountinfo numbers it)."""
        try:
            fd = self.open_path(path)
        except OSError:
            return None
        try:
            with open(f"/proc/self/fdinfo/{fd}") as info:
                return next((int(line.split()[1]) for line in info if line.startswith("mnt_id:")), None)
        except OSError:
            return None
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        """The names in a directory of this root ([] when it is not one)."""
        try:
            fd = self.open_path(path)
        except OSError:
            return []
        try:
            if not stat_module.S_ISDIR(os.fstat(fd).st_mode):
                return []
            # An O_PATH descriptor cannot be read: list through its /proc/self/fd link,
            # which names this very directory (no lookup by path in the daemon's root).
            return os.listdir(f"/proc/self/fd/{fd}")
        except OSError:
            return []
        finally:
            os.close(fd)


HOST = RootFs()  # the daemon's own root: no descriptor held, nothing to close
