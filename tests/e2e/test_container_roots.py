"""Containers added to a guarded parent (AddContainer, what ``enforcer oci-hook``
calls at createRuntime): the parent's exec entries name each container's own
files, from the moment the call returns, in the parent's one sandbox.

A directory stands in for the container's root filesystem and a child cgroup
for its cgroup, so this runs on every kernel of the matrix; the real runtimes
(overlayfs roots) are in tests/e2e/containers/test_oci_hook.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness.daemon import DaemonProcess
from tests.e2e.harness.env import expected_exec_mode
from tests.e2e.harness.waits import wait_denials
from tests.e2e.test_exec import PY, REFUSED_BY_MODE, outcome

pytestmark = pytest.mark.kernel

TOOL = "/enforcer-image/bin/"  # only in the container roots, not on the host: the image decides


def image(tmp_path: Path, name: str, with_tool: bool = True) -> Path:
    """A container root: /enforcer-image/bin/agent-tool (a copy of touch) if
    ``with_tool`` (else no /enforcer-image at all), and a file where the policy names the probe's python (every
    entry must exist in each container's root)."""
    root = tmp_path / name
    (root / PY.lstrip("/")).parent.mkdir(parents=True)
    (root / PY.lstrip("/")).write_bytes(b"\x7fELF the image's python")
    if with_tool:
        (root / "enforcer-image/bin").mkdir(parents=True)
        shutil.copy2("/usr/bin/touch", root / "enforcer-image/bin/agent-tool")
    return root


def parent(sandbox: str, path: Path) -> dict[str, Any]:
    return {"sandbox": sandbox, "target": {"cgroup": str(path), "create": True}, "labels": {"run": "ppo-9"},
            "exec": {"default": "deny", "allow": [PY, TOOL]}}


@pytest.fixture(scope="module")
def refused() -> str:
    """How a refused exec ends on this kernel (SIGKILL, or EPERM with BPF-LSM)."""
    return REFUSED_BY_MODE[expected_exec_mode()]


def code_and_details(call: Any) -> tuple[str, str]:
    from enforcer.client import EnforcerError

    try:
        call()
    except EnforcerError as exc:
        return exc.code.name, exc.details
    return "OK", ""


def test_a_container_added_to_a_guarded_parent_runs_its_images_files(
        client, cgroup_root, sandbox_id, tmp_path, refused):
    path = cgroup_root / sandbox_id
    client.apply(parent(sandbox_id, path))  # the entry is missing on the host: left to the containers
    try:
        container_cgroup = path / "ctr-1"
        container_cgroup.mkdir()
        root = image(tmp_path, "root-1")
        tool = root / "enforcer-image/bin/agent-tool"
        assert outcome(container_cgroup, "spawn", tool, tmp_path / "before") == refused
        (before,) = wait_denials(client, sandbox_id, 1)  # published before the container is added
        generation = client.get(sandbox_id).generation
        applied = client.add_container("ctr-1", str(container_cgroup), str(root))
        assert [(c.container, c.cgroup_path, c.root) for c in applied.containers] == [
            ("ctr-1", str(container_cgroup), str(root))]
        assert applied.generation != generation  # applied again, one switch
        assert outcome(container_cgroup, "spawn", tool, tmp_path / "after") == "exit:0"
        assert (tmp_path / "after").exists() and not (tmp_path / "before").exists()
        copy = tmp_path / "copy"
        shutil.copy2(tool, copy)
        assert outcome(container_cgroup, "spawn", copy, tmp_path / "copied") == refused
        denials = [d for d in wait_denials(client, sandbox_id, 2) if d.exec.path]
        assert [d.exec.path for d in denials] == [str(tool), str(copy)]
        # The parent's sandbox and labels, and which container once it was added.
        assert dict(before.labels) == {"run": "ppo-9"}
        assert dict(denials[1].labels) == {"run": "ppo-9", "container": "ctr-1"}

        client.remove_container("ctr-1")
        assert list(client.get(sandbox_id).containers) == []
        assert outcome(container_cgroup, "spawn", tool, tmp_path / "removed") == refused
    finally:
        client.remove(sandbox_id)


def test_bad_add_container_requests_are_refused_by_field_and_change_nothing(
        client, cgroup_root, sandbox_id, tmp_path, make_cgroup):
    path = cgroup_root / sandbox_id
    client.apply(parent(sandbox_id, path))
    try:
        (path / "ctr").mkdir()
        good = image(tmp_path, "good")
        before = client.get(sandbox_id)
        elsewhere = make_cgroup("unguarded")
        cases = {
            ("", str(path / "ctr"), str(good)): ("INVALID_ARGUMENT", "container: is required"),
            ("a/b", str(path / "ctr"), str(good)): ("INVALID_ARGUMENT", "container: 'a/b' is not a container id"),
            ("c", "", str(good)): ("INVALID_ARGUMENT", "cgroup: is required"),
            ("c", str(path / "missing"), str(good)): ("INVALID_ARGUMENT", "is not a cgroup"),
            ("c", str(path), str(good)): ("INVALID_ARGUMENT", f"is the cgroup of sandbox '{sandbox_id}' itself"),
            ("c", str(elsewhere), str(good)): ("NOT_FOUND", f"no sandbox guards cgroup {elsewhere}"),
            ("c", str(path / "ctr"), "rootfs"): ("INVALID_ARGUMENT", "root: 'rootfs' is not an absolute path"),
            ("c", str(path / "ctr"), str(tmp_path / "none")): ("INVALID_ARGUMENT", "is not a directory"),
            ("c", str(path / "ctr"), str(image(tmp_path, "no-tool", with_tool=False))): (
                "INVALID_ARGUMENT", f"exec.allow[1]: {TOOL} does not exist in the root filesystem of container c "),
        }
        for (container, cgroup, root), (code, message) in cases.items():
            got_code, details = code_and_details(lambda: client.add_container(container, cgroup, root))  # noqa: B023
            assert got_code == code and message in details, (container, cgroup, root, details)
        after = client.get(sandbox_id)
        assert (after.generation, list(after.containers)) == (before.generation, [])
        assert code_and_details(lambda: client.remove_container("never-added"))[0] == "NOT_FOUND"
        assert code_and_details(lambda: client.remove_container(""))[0] == "INVALID_ARGUMENT"
    finally:
        client.remove(sandbox_id)


def test_containers_are_kept_across_a_restart_and_dropped_once_ended(tmp_path, cgroup_root):
    sandbox = "roots-restart"
    path = cgroup_root / sandbox
    proc = DaemonProcess(tmp_path)
    proc.start()
    try:
        roots = {name: image(tmp_path, name) for name in ("kept", "ended")}
        with proc.client() as enf:
            enf.apply(parent(sandbox, path))
            for name, root in roots.items():
                (path / name).mkdir()
                enf.add_container(name, str(path / name), str(root))
        proc.stop(keep_enforcing=True)
        (path / "ended").rmdir()  # that container ended while no daemon ran
        proc.start()
        with proc.client() as enf:
            assert [c.container for c in enf.get(sandbox).containers] == ["kept", "ended"]
            tool = roots["kept"] / "enforcer-image/bin/agent-tool"
            assert outcome(path / "kept", "spawn", tool, tmp_path / "ran") == "exit:0"
            # The next apply of the policy keeps the live container's files, drops the ended one.
            enf.apply({**parent(sandbox, path), "labels": {"run": "ppo-10"}})
            assert [c.container for c in enf.get(sandbox).containers] == ["kept"]
            assert outcome(path / "kept", "spawn", tool, tmp_path / "ran-again") == "exit:0"
            enf.remove(sandbox)
        assert any(e.get("event") == "ended_container_dropped" and e.get("container") == "ended"
                   for e in proc.log_events())
    finally:
        proc.stop()

