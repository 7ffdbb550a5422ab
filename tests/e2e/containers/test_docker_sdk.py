"""Rollouts launched the way OpenHands launches them: the Docker SDK's
``containers.run``, with only the keyword arguments the README names
(``cgroup_parent=``, ``runtime="enforcer"``, ``environment=``), against the
tests' private dockerd."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker as docker_sdk
import pytest

from enforcer.cgroupfs import cgroup2_mount
from tests.e2e.harness.cleanup import Cleanup
from tests.e2e.harness.waits import wait_denials
from tests.e2e.runtimes import DOCKER_DIR, HOOK_POLICIES, IMAGE, Runtime, point_hooks_at

REFUSED_PORT = 9090
NC_REFUSED = b"can't connect to remote host (127.0.0.1): Operation not permitted"


@pytest.fixture
def sdk(docker: Runtime, daemon: Any) -> Iterator[docker_sdk.DockerClient]:
    point_hooks_at(daemon.socket)
    client = docker_sdk.DockerClient(base_url=f"unix://{DOCKER_DIR / 'docker.sock'}", timeout=120)
    yield client
    client.close()


def run(sdk: docker_sdk.DockerClient, cleanup: Cleanup, command: list[str], **options: Any) -> tuple[int, bytes]:
    """containers.run detached, then wait: (exit code, output)."""
    container = sdk.containers.run(IMAGE, command, detach=True, network_mode="none", **options)
    cleanup.add(lambda: container.remove(force=True))
    code = container.wait(timeout=120)["StatusCode"]
    return code, container.logs(stdout=True, stderr=True)


def guarded_parent(client: Any, cgroup_root: Path, sandbox: str, cleanup: Cleanup, **extra: Any) -> str:
    path = cgroup_root / sandbox
    client.apply({"sandbox": sandbox, "target": {"cgroup": str(path), "create": True}, "labels": {"run": "sdk"},
                  "network": {"default": "deny"}, **extra})
    cleanup.add(lambda: client.remove(sandbox))
    return "/" + str(path.relative_to(cgroup2_mount()))


def test_a_container_run_in_a_guarded_parent(client, cgroup_root, sdk, cleanup: Cleanup):
    parent = guarded_parent(client, cgroup_root, "sdk-parent", cleanup)
    code, output = run(sdk, cleanup, ["nc", "127.0.0.1", str(REFUSED_PORT)], cgroup_parent=parent)
    assert code != 0 and NC_REFUSED in output, output
    assert [d.destination.port for d in wait_denials(client, "sdk-parent", 1)] == [REFUSED_PORT]


def test_a_container_naming_its_policy_through_the_runtime(client, sdk, cleanup: Cleanup):
    (HOOK_POLICIES / "sdk-rollout.json").write_text(json.dumps({"labels": {"run": "sdk"},
                                                                 "network": {"default": "deny"}}))
    code, output = run(sdk, cleanup, ["nc", "127.0.0.1", str(REFUSED_PORT)], runtime="enforcer",
                       environment={"ENFORCER_POLICY": "sdk-rollout", "ENFORCER_SANDBOX": "sdk-rollout-1"})
    assert code != 0 and NC_REFUSED in output, output
    denials = wait_denials(client, "sdk-rollout-1", 1)
    assert [(d.destination.port, dict(d.labels)["run"]) for d in denials] == [(REFUSED_PORT, "sdk")]


def test_a_guarded_parents_exec_allowlist_names_the_images_files(client, cgroup_root, sdk, cleanup: Cleanup):
    parent = guarded_parent(client, cgroup_root, "sdk-parent-exec", cleanup,
                            exec={"default": "deny", "allow": ["/bin/"]})
    _, output = run(sdk, cleanup, ["sh", "-c", "echo image-ok; cp /bin/busybox /tmp/x; /tmp/x echo copy-ran"],
                       cgroup_parent=parent, runtime="enforcer")
    assert b"image-ok" in output and b"copy-ran" not in output, output
    assert [d.exec.path for d in wait_denials(client, "sdk-parent-exec", 1)] == ["/tmp/x"]
