"""What the daemon does about a cgroup escape the kernel reported.

The kernel kills the task that made the move (bpf_send_signal reaches only
the current task): when it moved itself, it never ran outside. A process it
moved, or created outside with clone3(CLONE_INTO_CGROUP), is killed here,
on the event, if it is still outside its sandbox: it ran until then, and the
denial says so (``moved_killed_by: daemon``).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import structlog

from enforcer.kernel import layout
from enforcer.kernel.events import EscapeDetail

log = structlog.get_logger("enforcer.escapes")

_MAX_CGROUPS_SEARCHED = 20_000


def cgroup_path_of(cgroup_id: int, mount: Path) -> str:
    """The cgroup whose id is ``cgroup_id`` (its directory's inode number), or ""."""
    if not cgroup_id:
        return ""
    searched = 0
    for directory, _, _ in os.walk(mount):
        searched += 1
        if searched > _MAX_CGROUPS_SEARCHED:
            break
        try:
            if os.stat(directory).st_ino == cgroup_id:
                return directory
        except OSError:
            continue
    return ""


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
