"""The exec bypass suite inside a real container: each known way around an exec
allowlist, tried by a process in a Podman container that the OCI hook guards,
with the policy's entries resolved in the container's root filesystem.

The image is the host's root overlaid (``--rootfs /:O``, as make demo-container
uses: no registry here), so tests/e2e/exec_probe.py and python3 are in it; what
the container writes lands in its own upper layer, as in any image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness.cleanup import Cleanup
from tests.e2e.harness.waits import wait_denials
from tests.e2e.runtimes import HOOK_POLICIES, Runtime, point_hooks_at

PY = os.path.realpath("/usr/bin/python3")
EXEC_PROBE = str(Path(__file__).resolve().parents[1] / "exec_probe.py")
TRUE, TOUCH, SLEEP = "/usr/bin/true", os.path.realpath("/usr/bin/touch"), os.path.realpath("/usr/bin/sleep")
LOADER = "/lib64/ld-linux-x86-64.so.2"
REFUSED = ("killed", "eperm")  # tracepoint (SIGKILL) or BPF-LSM (EPERM)


class Container:
    def __init__(self, podman: Runtime, container: str) -> None:
        self.podman, self.id = podman, container

    def python(self, code: str) -> None:
        """Run ``code`` in the container with its allowed python (no shell is allowed)."""
        self.podman.run("exec", self.id, PY, "-c", code)

    def probe(self, op: str, path: str, *args: str) -> str:
        done = self.podman.run("exec", self.id, PY, EXEC_PROBE, op, path, *args, check=False)
        if done.returncode == 137:  # the probe itself was killed (an exec from its thread replaces it)
            return "killed"
        if done.returncode != 0 or not done.stdout.startswith("{"):
            return f"probe exit {done.returncode}: {done.stderr[-300:]}"
        return str(json.loads(done.stdout.splitlines()[-1])["outcome"])


@pytest.fixture
def guarded(daemon: Any, podman_cli: Runtime, cleanup: Cleanup) -> Any:
    """Start a container (host root overlaid) under ``exec``, through the hook."""
    point_hooks_at(daemon.socket)

    def start(name: str, exec_policy: dict[str, Any]) -> Container:
        (HOOK_POLICIES / f"{name}.json").write_text(json.dumps({"labels": {"suite": "exec"}, "exec": exec_policy}))
        container = podman_cli.run("run", "-d", "--network", "none", "--annotation", f"enforcer.policy={name}",
                                   "--rootfs", "/:O", SLEEP, "600").stdout.strip()
        cleanup.add(lambda: podman_cli.run("rm", "-f", "-t", "0", container, check=False))
        return Container(podman_cli, container)

    return start


def test_an_allowlist_inside_a_container_refuses_every_way_around_it(client, guarded: Any):
    from enforcer.v1 import enforcer_pb2 as pb

    box = guarded("exec-allowlist", {"default": "deny", "allow": [PY, SLEEP, TRUE]})
    assert box.probe("spawn", TRUE) == "exit:0"
    box.python(f"import os, shutil; shutil.copy2({TRUE!r}, '/tmp/true-copy'); os.makedirs('/tmp/usr/bin'); "
               f"shutil.copy2({TOUCH!r}, '/tmp/usr/bin/true'); "
               "open('/tmp/job.sh', 'w').write('#!/bin/sh\\nexit 3\\n'); os.chmod('/tmp/job.sh', 0o755)")
    # written into the container's upper layer
    outcomes = {
        "copy": box.probe("spawn", "/tmp/true-copy"),
        "copy named like an allowed file": box.probe("spawn", "/tmp/usr/bin/true", "/tmp/mark"),
        "dynamic loader": box.probe("spawn", LOADER, TRUE),
        "memfd": box.probe("memfd", TRUE),
        "execveat of a copy": box.probe("execveat", "/tmp/true-copy"),
        "from a thread": box.probe("thread", "/tmp/true-copy"),
        "after vfork": box.probe("vfork", "/tmp/true-copy"),
        "a #! script (its interpreter not allowed)": box.probe("spawn", "/tmp/job.sh"),
    }
    assert {k: v for k, v in outcomes.items() if v not in REFUSED} == {}, outcomes
    assert box.probe("execveat", TRUE) == "exit:0"  # an fd of an allowed file: judged by identity
    assert box.probe("spawn", "/bin/true") == "exit:0"  # the image's own symlinks resolve inside it
    reasons = {e.exec.reason for e in wait_denials(client, box.id, len(outcomes)) if e.kind == pb.DENIAL_KIND_EXEC}
    assert {pb.EXEC_REASON_NOT_ALLOWED, pb.EXEC_REASON_UNNAMED} <= reasons


def test_a_denied_file_is_refused_inside_a_container_by_every_name(client, guarded: Any):
    box = guarded("exec-denylist", {"default": "allow", "deny": [TOUCH]})
    # A hard link of a lower-layer file copies it up first: the name and the link
    # then share the upper inode, which overlayfs numbers like the lower one.
    box.python(f"import os; os.makedirs('/tmp/e'); os.symlink({TOUCH!r}, '/tmp/e/link'); os.link({TOUCH!r}, '/tmp/e/hard')")
    outcomes = {
        "the file": box.probe("spawn", TOUCH, "/tmp/m1"),
        "a symlink": box.probe("spawn", "/tmp/e/link", "/tmp/m2"),
        "a hard link": box.probe("spawn", "/tmp/e/hard", "/tmp/m3"),
        "a '..' path": box.probe("spawn", "/usr/bin/../.." + TOUCH, "/tmp/m4"),
    }
    assert {k: v for k, v in outcomes.items() if v not in REFUSED} == {}, outcomes
    assert box.probe("spawn", TRUE) == "exit:0"
