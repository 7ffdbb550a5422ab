"""The GPU device guard end to end. There is no GPU here, so the test makes device
nodes with the real NVIDIA (195) and DRI (226) majors: with no driver behind them
an open that our program lets through fails with ENXIO, and one it refuses fails
with EPERM, which tells the two apart."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness.waits import wait_denials

pytestmark = pytest.mark.kernel  # the outcome depends on the kernel: runs on each (make test-kernels)

PY = os.path.realpath("/usr/bin/python3")
OPEN_ALL = """
import errno, json, os, sys
results = {}
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDWR))
        results[path] = "ok"
    except OSError as exc:
        results[path] = errno.errorcode[exc.errno]
try:
    os.mknod(sys.argv[1] + "-again", 0o600 | 0o020000, os.makedev(195, 1))
    results["mknod"] = "ok"
except OSError as exc:
    results["mknod"] = errno.errorcode[exc.errno]
print(json.dumps(results))
"""


@pytest.fixture
def nodes(tmp_path: Path) -> dict[str, Path]:
    made = {
        "nvidia0": (195, 0),
        "nvidiactl": (195, 255),
        "renderD128": (226, 128),
        "null": (1, 3),
    }
    paths = {}
    for name, (major, minor) in made.items():
        path = tmp_path / name
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        paths[name] = path
    return paths


def open_all(cgroup: Path | None, nodes: dict[str, Path]) -> dict[str, str]:
    from enforcer.cgroupfs import move_pid

    ordered = [nodes["nvidia0"], nodes["nvidiactl"], nodes["renderD128"], nodes["null"]]
    result = subprocess.run([PY, "-c", OPEN_ALL, *map(str, ordered)], capture_output=True, text=True, timeout=30,
                            check=True, preexec_fn=(lambda: move_pid(0, cgroup)) if cgroup else None)
    by_path = json.loads(result.stdout)
    names = {str(path): name for name, path in nodes.items()}
    return {names.get(key, key): value for key, value in by_path.items()}


def apply(client: Any, sandbox: str, cgroup: Path, **extra: Any) -> None:
    client.apply({"sandbox": sandbox, "target": {"cgroup": str(cgroup)}, "labels": {"gpu-test": "1"}, **extra})


def test_gpu_nodes_are_refused_by_default_and_reported(client, make_cgroup, sandbox_id, nodes):
    from enforcer.v1 import enforcer_pb2 as pb

    cgroup = make_cgroup()
    apply(client, sandbox_id, cgroup)
    assert open_all(cgroup, nodes) == {
        "nvidia0": "EPERM", "nvidiactl": "EPERM", "renderD128": "EPERM", "null": "ok", "mknod": "EPERM"}
    events = [e for e in wait_denials(client, sandbox_id, 4) if e.kind == pb.DENIAL_KIND_DEVICE]
    assert [(e.device.major, e.device.minor, e.device.access) for e in events] == [
        (195, 0, "rw"), (195, 255, "rw"), (226, 128, "rw"), (195, 1, "m")]
    # Named as a security team reads them, not only by number.
    assert [(e.device.driver, e.device.name) for e in events] == [
        ("nvidia", "/dev/nvidia0"), ("nvidia", "/dev/nvidiactl"), ("drm", "/dev/dri/renderD128"),
        ("nvidia", "/dev/nvidia1")]
    assert all(e.action == pb.ACTION_REFUSED and dict(e.labels) == {"gpu-test": "1"} for e in events)
    assert client.stats(sandbox_id).device.refused == 4


def test_gpu_allow_lets_the_open_through(client, make_cgroup, sandbox_id, nodes):
    cgroup = make_cgroup()
    apply(client, sandbox_id, cgroup, devices={"gpu": "allow"})
    result = open_all(cgroup, nodes)
    assert result["nvidia0"] == result["renderD128"] == "ENXIO"  # past our check, no driver behind it
    assert result["null"] == "ok" and result["mknod"] == "ok"
    assert client.stats(sandbox_id).device.refused == 0


def test_audit_mode_reports_gpu_opens_without_refusing(client, make_cgroup, sandbox_id, nodes):
    from enforcer.v1 import enforcer_pb2 as pb

    cgroup = make_cgroup()
    apply(client, sandbox_id, cgroup, mode="audit")
    assert open_all(cgroup, nodes)["nvidia0"] == "ENXIO"
    events = [e for e in wait_denials(client, sandbox_id, 1) if e.kind == pb.DENIAL_KIND_DEVICE]
    assert events and all(e.action == pb.ACTION_AUDITED for e in events)


def test_outside_the_sandbox_and_after_removal_nothing_is_refused(client, make_cgroup, sandbox_id, nodes):
    cgroup = make_cgroup()
    apply(client, sandbox_id, cgroup)
    assert open_all(None, nodes)["nvidia0"] == "ENXIO"
    client.remove(sandbox_id)
    assert open_all(cgroup, nodes)["nvidia0"] == "ENXIO"


def test_bad_device_policy_is_refused_by_field(client, make_cgroup, sandbox_id):
    from enforcer.policy import PolicyError

    with pytest.raises(PolicyError, match=r"^devices.gpu: must be one of deny, allow"):
        apply(client, sandbox_id, make_cgroup(), devices={"gpu": "sometimes"})
    with pytest.raises(PolicyError, match=r"^devices.tpu: unknown field"):
        apply(client, sandbox_id, make_cgroup("other"), devices={"tpu": "allow"})
