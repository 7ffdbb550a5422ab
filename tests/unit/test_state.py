"""The policy store on disk: round trip, atomic replacement, the state of an
earlier boot discarded, and a damaged file refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.cgroupfs import Cgroup
from enforcer.daemon import state
from enforcer.daemon.state import StateDir, StateError
from enforcer.daemon.store import ContainerRoot, SandboxRecord
from enforcer.kernel.maps import CounterTotals
from enforcer.policy import parse_policy


@pytest.fixture
def boot(tmp_path, monkeypatch) -> Path:
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-1\n")
    monkeypatch.setattr(state, "BOOT_ID", boot_id)
    return boot_id


def record(sandbox: str = "rollout-17") -> SandboxRecord:
    policy = parse_policy({"sandbox": sandbox, "target": {"cgroup": "/sys/fs/cgroup/x"}, "labels": {"run": "7"},
                           "network": {"default": "deny", "allow": [{"to": "10.0.0.0/8", "ports": [443]}]},
                           "exec": {"default": "deny", "allow": ["/usr/bin/"]},
                           "escalate": {"after": 3, "within": "10s", "action": "freeze"}})
    rec = SandboxRecord(policy, Cgroup(Path("/sys/fs/cgroup/x"), 1234, 3), generation=7, slot=2, tag=9,
                        applied_unix_ns=5, policy_sha256="ab" * 32, quarantined=True, frozen=False,
                        counter_base=CounterTotals([0, 1, 2, 3, 4, 5, 6, 7], [0] * 8, 3, 4), counters_since_ns=6,
                        escalation_handled=3,
                        containers={"c1": ContainerRoot("c1", Cgroup(Path("/sys/fs/cgroup/x/c1"), 1235, 4), "/r/c1")})
    return rec


def test_round_trip(tmp_path, boot):
    store = StateDir(tmp_path / "state")
    store.save(record("a"))
    store.save(record("b"))
    store.delete("b")
    (loaded,) = StateDir(tmp_path / "state").load()
    original = record("a")
    for name in ("policy", "cgroup", "generation", "slot", "tag", "applied_unix_ns", "policy_sha256", "quarantined",
                 "frozen", "counter_base", "counters_since_ns", "escalation_handled", "containers"):
        assert getattr(loaded, name) == getattr(original, name), name
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"


def test_files_of_builds_before_containers_read_as_none(tmp_path, boot):
    import json

    store = StateDir(tmp_path / "state")
    store.save(record("a"))
    (path,) = store.sandboxes.glob("*.json")
    doc = json.loads(path.read_text())
    del doc["containers"]
    path.write_text(json.dumps(doc))
    (loaded,) = store.load()
    assert loaded.containers == {}


def test_a_write_cut_short_leaves_the_old_file(tmp_path, boot):
    store = StateDir(tmp_path / "state")
    store.save(record("a"))
    (store.sandboxes / ".deadbeef.json.tmp").write_text('{"half": ')  # what a kill mid-write leaves
    assert [r.policy.sandbox for r in store.load()] == ["a"]
    assert not list(store.sandboxes.glob(".*.tmp"))


def test_the_state_of_an_earlier_boot_is_discarded(tmp_path, boot):
    store = StateDir(tmp_path / "state")
    store.load()
    store.save(record("a"))
    (store.sandboxes / "0123.json").write_text("{torn")  # a power loss mid-write: never read
    boot.write_text("boot-2\n")
    assert StateDir(tmp_path / "state").load() == []
    assert not list(store.sandboxes.glob("*.json"))


def test_a_damaged_file_is_refused_by_name(tmp_path, boot):
    store = StateDir(tmp_path / "state")
    store.load()
    store.save(record("a"))
    (path,) = store.sandboxes.glob("*.json")
    path.write_text(path.read_text().replace('"slot": 2', '"slot": "two"'))
    with pytest.raises(StateError, match=f"{path} cannot be read back"):
        store.load()
