"""The audit log on disk: what it records, rotation under load losing nothing
(and exported back whole),
and a full disk that is reported and counted while enforcement goes on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness.daemon import DaemonProcess
from tests.e2e.harness.env import patience
from tests.e2e.harness.network import HOST4
from tests.e2e.test_network import policy, sendto
from tests.unit.test_export import assert_valid_ocsf

pytestmark = pytest.mark.kernel  # the outcome depends on the kernel: runs on each (make test-kernels)


def records(log: Path) -> list[dict[str, Any]]:
    """Every record of the log and its rotated files, oldest first."""
    files = [*sorted(log.parent.glob(log.name + ".*"), key=lambda p: -int(p.suffix[1:])), log]
    return [json.loads(line) for f in files if f.exists() for line in whole_lines(f.read_text())]


def whole_lines(text: str) -> list[str]:
    """A daemon may be writing the last line while a test reads it: only whole lines."""
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]


def wait_for_denials(enf: Any, sandbox: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + patience(timeout)
    while sum(len(b.denials) for b in enf.denials(sandboxes=[sandbox])) < count:
        assert time.monotonic() < deadline, "denials did not arrive"
        time.sleep(0.05)


def test_policy_changes_and_denials_are_recorded(daemon, client, make_cgroup, sandbox_id, probe):
    from enforcer.policy import parse_policy
    from enforcer.wire import policy_digest

    cgroup = make_cgroup()
    doc = policy(sandbox_id, cgroup)
    client.apply(doc)
    assert probe(cgroup, {**sendto(HOST4, 9), "repeat": 3}) == ["EPERM*3"]
    wait_for_denials(client, sandbox_id, 3)
    client.set_labels(sandbox_id, episode="2")
    client.remove(sandbox_id)
    mine = [r for r in records(daemon.audit_path) if r.get("sandbox") == sandbox_id]
    assert [r["event"] for r in mine] == ["policy_applied", "denial", "denial", "denial", "labels_updated",
                                          "policy_removed"]
    applied = mine[0]
    assert applied["policy_sha256"] == policy_digest(parse_policy(doc))
    relabelled = parse_policy({**doc, "labels": {"run": "ppo-7", "episode": "2"}})
    assert mine[-1]["policy_sha256"] == policy_digest(relabelled)  # labels are part of the policy
    assert applied["client"].startswith("unix:") and applied["replaced"] is False
    seqs = [r["seq"] for r in mine if r["event"] == "denial"]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert all(r["kind"] == "DENIAL_KIND_SENDMSG" and r["port"] == 9 for r in mine[1:4])
    assert mine[4]["labels"] == {"run": "ppo-7", "episode": "2"}


def test_rotation_under_load_loses_no_record(tmp_path, make_cgroup, sandbox_id, probe):
    proc = DaemonProcess(tmp_path, "--events-per-sec", "0", "--audit-max-bytes", "200000", "--audit-keep", "1000")
    proc.start()
    try:
        with proc.client() as enf:
            cgroup = make_cgroup()
            enf.apply(policy(sandbox_id, cgroup))
            assert probe(cgroup, {**sendto(HOST4, 9), "repeat": 20_000}) == ["EPERM*20000"]
            wait_for_denials(enf, sandbox_id, 20_000)
            status = enf.status()
            assert status.audit_write_failures == 0
    finally:
        assert proc.stop() == 0
    rotated = list(tmp_path.glob("audit.jsonl.*"))
    assert len(rotated) >= 10  # ~230 bytes a record: it rotated many times under load
    assert all(p.stat().st_size <= 200_000 for p in rotated)
    everything = records(proc.audit_path)
    denials = [r for r in everything if r["event"] == "denial"]
    assert [r["seq"] for r in denials] == list(range(1, 20_001))

    # Export reads it all back, also after logrotate-style compression of the older files.
    for old in sorted(rotated, key=lambda p: int(p.suffix[1:]))[len(rotated) // 2:]:
        subprocess.run(["gzip", str(old)], check=True)
    exported = export_cli(proc.audit_path)
    assert [json.loads(line) for line in exported.splitlines()] == everything
    ocsf = [json.loads(line) for line in export_cli(proc.audit_path, "--format", "ocsf", "--kind", "sendmsg").splitlines()]
    assert [int(e["metadata"]["uid"]) for e in ocsf] == list(range(1, 20_001))
    assert {(e["class_uid"], e["disposition"], e["dst_endpoint"]["port"]) for e in ocsf} == {(4001, "Blocked", 9)}
    for event in ocsf[::500]:
        assert_valid_ocsf(event)


def export_cli(log: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "enforcer.cli", "export", "--audit-log", str(log), *args],
                          capture_output=True, text=True, check=True)
    return done.stdout


def test_a_full_disk_is_reported_and_counted_and_enforcement_goes_on(tmp_path, make_cgroup, sandbox_id, probe):
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        proc = DaemonProcess(tmp_path, "--events-per-sec", "0", "--audit-log", str(disk / "audit.jsonl"))
        proc.start()
        try:
            with proc.client() as enf:
                cgroup = make_cgroup()
                enf.apply(policy(sandbox_id, cgroup))
                assert probe(cgroup, {**sendto(HOST4, 9), "repeat": 2000}) == ["EPERM*2000"]
                wait_for_denials(enf, sandbox_id, 2000)
                status = enf.status()
                assert status.audit_write_failures > 0
                assert status.audit_records + status.audit_write_failures >= 2001  # the apply, the denials
                assert enf.stats(sandbox_id).sendmsg.refused == 2000
                assert probe(cgroup, {**sendto(HOST4, 9)}) == ["EPERM"]  # still enforcing
        finally:
            assert proc.stop() == 0
        failures = [e for e in proc.log_events() if e["event"] == "audit_write_failed"]
        assert failures and failures[0]["error"] == "No space left on device"
        written = records(disk / "audit.jsonl")  # every line whole: a short write is taken back out
        assert len(written) == status.audit_records
    finally:
        subprocess.run(["umount", str(disk)], check=True)
