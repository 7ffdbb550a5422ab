"""What the daemon does about a cgroup escape the kernel reported.

The kernel kills the task that made the move (bpf_send_signal reaches only
the current task): when it moved itself, it never ran outside. A process it
moved, or created outside with clone3(CLONE_INTO_CGROUP), is killed here,
on the event, if it is still outside its sandbox: it ran until then, and the
denial says so (``moved_killed_by: daemon``).
"""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

import structlog

from enforcer.kernel import layout
from enforcer.kernel.events import EscapeDetail

log = structlog.get_logger("enforcer.escapes")

# A cgroup2 directory's file handle (FILEID_KERNFS): its kernfs node id, which is the cgroup id.
_FILEID_KERNFS = 0xFE
_libc = ctypes.CDLL(None, use_errno=True)


class _KernfsHandle(ctypes.Structure):  # struct file_handle with 8 bytes of f_handle
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("cgroup_id", ctypes.c_uint64)]


def cgroup_path_of(cgroup_id: int, mount: Path) -> str:
    """The cgroup whose id is ``cgroup_id``, or "" (gone, or never was): opened
    by its id as a kernfs file handle, in one call however many cgroups the
    host has (the event pipeline's thread asks, per escape)."""
    if not cgroup_id:
        return ""
    handle = _KernfsHandle(ctypes.sizeof(ctypes.c_uint64), _FILEID_KERNFS, cgroup_id)
    try:
        mount_fd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return ""
    try:
        fd = _libc.open_by_handle_at(mount_fd, ctypes.byref(handle), os.O_RDONLY | os.O_DIRECTORY)
        if fd < 0:
            return ""
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    finally:
        os.close(mount_fd)


def _inside(pid: int, sandbox: Path, mount: Path) -> bool | None:
    """Is the process in the sandbox's subtree now? None if it is gone."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    path = next((line[3:] for line in lines if line.startswith("0::")), "")
    now = mount / path.lstrip("/")
    return now == sandbox or sandbox in now.parents


def contain(detail: EscapeDetail, action: int, sandbox: Path | None, mount: Path) -> str:
    """Who killed the process that left: "kernel", "daemon" or "" (audit mode, or it is gone)."""
    if action != layout.ACTION_REFUSED or detail.how == layout.ESCAPE_SIGNAL or detail.lsm or detail.moved_tgid <= 0:
        return ""  # audit mode; a signal to the daemon; refused by BPF-LSM: nothing left the sandbox
    if detail.moved_is_writer and detail.writer_killed:
        return "kernel"
    if sandbox is not None and _inside(detail.moved_tgid, sandbox, mount) is not False:
        return ""  # gone already, or moved back in
    try:
        os.kill(detail.moved_tgid, signal.SIGKILL)
    except ProcessLookupError:
        return ""
    log.warning("escaped_process_killed", pid=detail.moved_tgid)
    return "daemon"
