"""Which root filesystems a sandbox's exec entries are resolved in.

An entry names a file as the process that runs it sees it. For a sandbox on a
plain cgroup that is the host's file; for a container target, or a container
guarded through the OCI hook, the container's. A guarded parent (a cgroup that
containers are started in: ``docker run --cgroup-parent``) holds several roots
at once: each container added to it (AddContainer, which the hook calls at
createRuntime) gets the entries resolved in its own root filesystem, all in
the sandbox's one rule set. That is sound because the kernel compares the
super_block device with the inode: each container's overlay is a file system of
its own, so one root's identities never stand for another root's files.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog

from enforcer.cgroupfs import Cgroup, CgroupError, a_process_in, cgroup_at, cgroup_path
from enforcer.daemon.store import ContainerRoot, Containers
from enforcer.kernel import exec_rules
from enforcer.kernel.rootfs import RootFs
from enforcer.policy import Policy, PolicyError, TargetKind

log = structlog.get_logger("enforcer.exec_roots")


def container_root(container: str, cgroup: str, root: str, mount: Path) -> ContainerRoot:
    """An AddContainer request checked: PolicyError names the field."""
    if not container:
        raise PolicyError("container", "is required (the runtime's container id)")
    if len(container) > 256 or not container.isprintable() or "/" in container:
        raise PolicyError("container", f"{container[:64]!r} is not a container id")
    if not cgroup:
        raise PolicyError("cgroup", "is required (the container's cgroup: the 0:: line of its init)")
    for field, value in (("cgroup", cgroup), ("root", root)):
        if "\0" in value or len(value) > 4096:
            raise PolicyError(field, "is not a path (a NUL byte, or longer than PATH_MAX)")
    try:
        found = cgroup_at(cgroup_path(cgroup, mount), mount)
    except CgroupError as exc:
        raise PolicyError("cgroup", str(exc)) from exc
    if not root.startswith("/"):
        raise PolicyError("root", f"{root!r} is not an absolute path (the container's root filesystem)"
                          if root else "is required (the container's root filesystem)")
    if not os.path.isdir(root):
        raise PolicyError("root", f"{root} is not a directory")
    return ContainerRoot(container, found, root)


def live(containers: Containers) -> Containers:
    """The containers whose cgroup still exists: an ended container's root is gone."""
    kept = {}
    for name, container in containers.items():
        if container.cgroup.still_exists():
            kept[name] = container
        else:
            log.info("ended_container_dropped", container=name, cgroup=str(container.cgroup.path))
    return kept


def compile_exec(policy: Policy, cgroup: Cgroup, containers: Iterable[ContainerRoot] = ()) -> exec_rules.CompiledExec:
    """The policy's exec entries as files of every root the sandbox holds.
    PolicyError names the entry and the root it is missing from."""
    assert policy.exec is not None
    target = policy.target
    if target.root:
        compiled = _in_root(policy, "target.root", target.root, lambda: RootFs(target.root))
    elif target.kind is TargetKind.CONTAINER:
        pid = a_process_in(cgroup.path)
        if pid is None:
            raise PolicyError("target.container", f"container {target.value} has no process left: its files "
                                                  "cannot be resolved (has it exited?)")
        compiled = _in_root(policy, "target.container", f"the root of container {target.value} (pid {pid})",
                            lambda: RootFs.of_process(pid))
    else:
        # A cgroup made to start containers in: its entries may name files only the images have.
        compiled = exec_rules.compile_exec(policy.exec, missing_ok=target.create)
    for container in containers:
        name = f"container {container.container[:12]} ({container.root})"
        compiled.merge(_in_root(policy, "root", f"the root of {name}",
                                functools.partial(RootFs, container.root, name=name)))
    exec_rules.allow_runtimes(compiled)
    return compiled


def _in_root(policy: Policy, field: str, what: str, open_root: Callable[[], RootFs]) -> exec_rules.CompiledExec:
    assert policy.exec is not None
    try:
        rootfs = open_root()
    except OSError as exc:
        raise PolicyError(field, f"cannot open {what}: {exc.strerror}") from exc
    with rootfs:
        return exec_rules.compile_exec(policy.exec, rootfs)
