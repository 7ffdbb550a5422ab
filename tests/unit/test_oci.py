"""The OCI hook's reading of a container (state, bundle config, the policy it
names) and the runtime wrapper's edit of config.json, without a runtime."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from enforcer.oci import (
    HookError,
    add_hooks,
    bundle_of,
    container_policy,
    extra_labels,
    policy_file,
    policy_reference,
    read_state,
    sandbox_id,
)

CID = "4c2e54e076cd" + "0" * 52


def test_bad_states_are_refused_with_the_reason():
    with pytest.raises(HookError, match="not JSON"):
        read_state("{")
    with pytest.raises(HookError, match="no container id"):
        read_state('{"pid": 3}')


def test_the_policy_is_named_by_annotation_or_environment():
    config = {"process": {"env": ["PATH=/bin", "ENFORCER_POLICY=from-env", "ENFORCER_LABELS=a=1, b=2"]}}
    assert policy_reference({}, config) == "from-env"
    assert policy_reference({"annotations": {"enforcer.policy": "from-state"}}, config) == "from-state"
    assert extra_labels({"annotations": {"enforcer.label.a": "0"}}, config) == {"a": "0", "b": "2"}
    assert policy_reference({}, {"process": {"env": ["PATH=/bin"]}}) is None


def test_the_sandbox_is_the_orchestrators_name_or_the_container_id():
    assert sandbox_id({"id": CID}, {}) == CID
    assert sandbox_id({"id": CID, "annotations": {"enforcer.sandbox": "rollout-17"}}, {}) == "rollout-17"
    assert sandbox_id({"id": CID}, {"process": {"env": ["ENFORCER_SANDBOX=rollout-18"]}}) == "rollout-18"


def test_policy_names_stay_in_the_policy_directory(tmp_path):
    (tmp_path / "web.yml").write_text("network: {default: deny}\n")
    assert policy_file("web", tmp_path) == tmp_path / "web.yml"
    assert policy_file("/etc/x.yaml", tmp_path).as_posix() == "/etc/x.yaml"
    for bad in ("../web", "a/b", ".hidden"):
        with pytest.raises(HookError, match="neither an absolute path nor a name"):
            policy_file(bad, tmp_path)
    with pytest.raises(HookError, match=f"no policy 'nope' in {tmp_path}"):
        policy_file("nope", tmp_path)


def test_the_container_policy_targets_the_inits_cgroup_and_the_bundles_root(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"labels": {"run": "7"}, "network": {"default": "deny"}}))
    state = {"id": CID, "pid": os.getpid(), "bundle": str(tmp_path), "annotations": {"enforcer.policy": "p"}}
    (tmp_path / "t.json").write_text(json.dumps({"target": {"cgroup": "/x"}}))
    with pytest.raises(HookError, match="target: must be left out"):
        container_policy(state, {"root": {"path": "r"}}, "t", tmp_path)
    with pytest.raises(HookError, match="no init pid"):
        container_policy({**state, "pid": 0}, {}, "p", tmp_path)
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    own = next(x for x in lines if x.startswith("0::"))[3:].lstrip("/")
    if not own:  # this process stands for a container's init: in the root cgroup it cannot be guarded
        with pytest.raises(HookError, match="not in a cgroup2 cgroup of its own"):
            container_policy(state, {"root": {"path": "rootfs"}}, "p", tmp_path)
        return
    doc = container_policy(state, {"root": {"path": "rootfs"}}, "p", tmp_path)
    assert doc["target"] == {"cgroup": own, "root": f"{tmp_path}/rootfs"}
    assert doc["sandbox"] == CID and doc["labels"] == {"run": "7", "container": CID[:12]}



def test_the_runtime_wrapper_puts_its_hooks_first_and_finds_the_bundle(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"hooks": {"poststop": [{"path": "/other"}]}, "root": {"path": "rootfs"}}))
    add_hooks(config, ["/py", "-m", "enforcer.cli", "oci-hook"])
    hooks = json.loads(config.read_text())["hooks"]
    assert hooks["createRuntime"] == [{"path": "/py", "args": ["/py", "-m", "enforcer.cli", "oci-hook",
                                                               "createRuntime"], "timeout": 60}]
    assert [h["path"] for h in hooks["poststop"]] == ["/py", "/other"]
    assert bundle_of(["--root", "/r", "--log", "l", "create", "--bundle", "/b", "--pid-file", "p", "id"]).as_posix() == "/b"
    assert bundle_of(["create", "--bundle=/c", "id"]).as_posix() == "/c"
    assert bundle_of(["--root", "/r", "start", "id"]) is None
