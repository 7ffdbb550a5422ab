"""Restart safety: enforcement outlives the daemon (SIGTERM, SIGKILL), a new
daemon takes over the pinned programs, maps and saved policies with no moment
in which a sandbox is unguarded, and nothing recorded is lost or doubled."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from enforcer.kernel.loader import CGROUP_PROGRAMS
from tests.e2e.harness.daemon import DaemonProcess
from tests.e2e.harness.env import expected_exec_mode, patience
from tests.e2e.harness.network import HOST4
from tests.e2e.harness.probes import Probe
from tests.e2e.test_audit import records
from tests.e2e.test_network import connect, policy, sendto

pytestmark = pytest.mark.kernel  # the outcome depends on the kernel: runs on each (make test-kernels)


class BackgroundProbe:
    """Probe ops repeated in a real process until stopped: what every attempt
    returned while something else happened (a restart)."""

    def __init__(self, probe: Probe, cgroup: Path, op: dict[str, Any], workdir: Path) -> None:
        self.stop_file = workdir / f"stop-{id(self)}"
        self.started_file = workdir / f"started-{id(self)}"
        self.result: list[str] = []
        op = {**op, "repeat": 10_000_000, "until": str(self.stop_file), "started": str(self.started_file)}
        # It runs across a daemon's stop and start (a compile: a minute under emulation).
        self._thread = threading.Thread(target=lambda: self.result.extend(probe(cgroup, op, timeout=600)))
        self._thread.start()
        deadline = time.monotonic() + patience(30)
        while not self.started_file.exists():
            assert time.monotonic() < deadline, "probe did not start"
            time.sleep(0.01)

    def finish(self) -> dict[str, int]:
        self.stop_file.touch()
        self._thread.join(timeout=patience(60))
        assert self.result, "the background probe gave no result (its thread's exception is in the warnings)"
        outcomes = {}
        for part in self.result[0].split(","):
            name, count = part.rsplit("*", 1)
            outcomes[name] = int(count)
        return outcomes


def audit_denials(proc: DaemonProcess, sandbox: str) -> list[dict[str, Any]]:
    return [r for r in records(proc.audit_path) if r["event"] == "denial" and r.get("sandbox") == sandbox]


def wait_for(predicate: Any, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + patience(timeout)
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def exec_refused(cgroup: Path, *command: str) -> bool:
    """Killed before it ran (tracepoint) or refused with EPERM (BPF-LSM)."""
    from enforcer.cgroupfs import move_pid

    try:
        return subprocess.run(list(command), preexec_fn=lambda: move_pid(0, cgroup), timeout=30).returncode == -9
    except PermissionError:
        return True


def test_enforcement_holds_across_a_restart_with_no_gap(tmp_path, make_cgroup, sandbox_id, probe: Probe):
    proc = DaemonProcess(tmp_path, "--events-per-sec", "0")
    proc.start()
    cgroup = make_cgroup()
    doc = policy(sandbox_id, cgroup, allow=[{"to": HOST4, "ports": [80]}],
                 exec={"default": "allow", "deny": ["/usr/bin/true"]})
    try:
        with proc.client() as enf:
            applied = enf.apply(doc).applied
        assert probe(cgroup, connect(HOST4, 443)) == ["EPERM"]

        # Refused connects all through: stop, down, start, take-over.
        background = BackgroundProbe(probe, cgroup, connect(HOST4, 443), tmp_path)
        assert proc.stop(signal.SIGTERM, keep_enforcing=True) == 0
        assert probe(cgroup, connect(HOST4, 443)) == ["EPERM"]        # no daemon: still refused
        assert exec_refused(cgroup, "/usr/bin/true")                   # exec too
        assert probe(cgroup, connect(HOST4, 80)) == ["ECONNREFUSED"]  # and the allow still allows
        proc.start()
        outcomes = background.finish()
        assert set(outcomes) == {"EPERM"}, outcomes
        attempts = outcomes["EPERM"]

        with proc.client() as enf:
            status = enf.status()
            assert status.taken_over and status.pin_dir == str(proc.pin_dir)
            cgroup_hooks = {p.name: (p.attached, p.expected) for p in status.programs if p.hook == "cgroup"}
            assert cgroup_hooks == {name: (1, 1) for name in CGROUP_PROGRAMS}
            assert {"enf_connect4", "enf_sendmsg6", "enf_sock_create", "enf_device", "enf_recvmsg4",
                    "enf_getpeername6"} <= set(cgroup_hooks)
            links = {p.name for p in status.programs if p.hook != "cgroup"}
            assert {"tp-sys_enter_execve", "tp-sys_enter_execveat"} <= links
            assert links >= ({"lsm__bprm_check_security", "lsm__socket_create"} if expected_exec_mode() == "lsm"
                             else {"raw-sched_process_exec", "tp-sys_enter_socket"})
            (listed,) = enf.list()
            assert (listed.generation, listed.cgroup_id) == (applied.generation, applied.cgroup_id)
            assert listed.policy.sandbox == sandbox_id
            stats = enf.stats(sandbox_id)
            # Exact across the restart: every refusal counted once, by whichever build was active.
            assert stats.connect.refused == attempts + 2 and stats.exec.refused == 1
            lost = stats.events_lost  # the flood outran the ring buffer while no daemon drained it
            # Up to a full ring buffer (~50,000 denials) to drain: minutes under the 6.1 VM's emulation.
            wait_for(lambda: len(audit_denials(proc, sandbox_id)) + lost >= attempts + 3, timeout=240,
                     what="the drain")
            enf.remove(sandbox_id)
        assert probe(cgroup, connect(HOST4, 443)) == ["ECONNREFUSED"]
    finally:
        proc.stop()
    taken_over = [e for e in proc.log_events() if e["event"] == "enforcement_taken_over"]
    assert len(taken_over) == 1 and taken_over[0]["sandboxes"] == 1
    # Every refusal is in the audit log once, in order, including those made while no
    # daemon ran, or counted as lost by the kernel.
    denials = audit_denials(proc, sandbox_id)
    assert len(denials) + lost == attempts + 3
    assert [d["seq"] for d in denials] == list(range(denials[0]["seq"], denials[0]["seq"] + len(denials)))
    assert any(d["kind"] == "DENIAL_KIND_EXEC" and d["path"] == "/usr/bin/true" for d in denials)


def test_sigkill_mid_stream_loses_no_record(tmp_path, make_cgroup, sandbox_id, probe: Probe):
    proc = DaemonProcess(tmp_path, "--events-per-sec", "0")
    proc.start()
    cgroup = make_cgroup()
    total = 30_000  # below what the 4 MiB ring buffer holds while no daemon drains it
    try:
        with proc.client() as enf:
            enf.apply(policy(sandbox_id, cgroup))
        flood = threading.Thread(target=lambda: results.extend(probe(cgroup, {**sendto(HOST4, 9), "repeat": total})))
        results: list[str] = []
        flood.start()
        wait_for(lambda: len(audit_denials(proc, sandbox_id)) > 2000, what="the stream to be under way")
        proc.stop(signal.SIGKILL, keep_enforcing=True)
        flood.join(timeout=120)
        assert results == [f"EPERM*{total}"]  # refusals went on without a daemon
        proc.start()
        wait_for(lambda: len(audit_denials(proc, sandbox_id)) >= total, what="all denials in the audit log")
        with proc.client() as enf:
            stats = enf.stats(sandbox_id)
            assert stats.sendmsg.refused == total and stats.events_lost == 0
            streamed = [e for batch in enf.denials(sandboxes=[sandbox_id]) for e in batch.denials]
    finally:
        proc.stop()
    denials = audit_denials(proc, sandbox_id)
    seqs = [d["seq"] for d in denials]
    assert len(denials) == total and seqs == list(range(seqs[0], seqs[0] + total))  # none lost, none twice
    assert len({d["ring_pos"] for d in denials}) == total
    # The new daemon's stream carries on from the old one's sequence numbers.
    assert streamed and streamed[-1].seq == seqs[-1]


def test_changes_cut_short_are_reconciled_from_the_saved_policy(tmp_path, make_cgroup, sandbox_id, probe: Probe):
    proc = DaemonProcess(tmp_path)
    proc.start()
    cgroup = make_cgroup()
    try:
        with proc.client() as enf:
            enf.apply(policy(sandbox_id, cgroup))
        assert proc.stop(signal.SIGKILL, keep_enforcing=True) == -signal.SIGKILL
        # What a daemon killed after saving a replace, before the kernel switch, leaves:
        (saved,) = (proc.state_dir / "sandboxes").glob("*.json")
        doc = json.loads(saved.read_text())
        from enforcer.policy import parse_policy
        from enforcer.wire import policy_to_proto

        wanted = parse_policy(policy(sandbox_id, cgroup, allow=[{"to": HOST4, "ports": [443]}]))
        import base64

        doc.update(policy=base64.b64encode(policy_to_proto(wanted).SerializeToString()).decode(),
                   generation=doc["generation"] + 7)
        saved.write_text(json.dumps(doc))
        assert probe(cgroup, connect(HOST4, 443)) == ["EPERM"]
        proc.start()
        assert probe(cgroup, connect(HOST4, 443)) == ["ECONNREFUSED"]  # the saved (newer) policy is in force
        assert probe(cgroup, connect(HOST4, 444)) == ["EPERM"]
        assert any(e["event"] == "sandbox_reapplied" for e in proc.log_events())
    finally:
        proc.stop()


def test_uninstall_ends_enforcement_and_removes_every_pin(tmp_path, make_cgroup, sandbox_id, probe: Probe):
    proc = DaemonProcess(tmp_path)
    proc.start()
    cgroup = make_cgroup()
    with proc.client() as enf:
        enf.apply(policy(sandbox_id, cgroup))
    assert proc.stop(keep_enforcing=True) == 0
    assert {p.name.split("-")[0] for p in proc.pin_dir.iterdir()} == {"active", "maps", "build"}
    assert probe(cgroup, connect(HOST4, 443)) == ["EPERM"]
    done = proc.uninstall()
    assert "enforcement ended" in done.stdout
    assert probe(cgroup, connect(HOST4, 443)) == ["ECONNREFUSED"]
    assert not proc.pin_dir.exists()
    assert not list((proc.state_dir / "sandboxes").glob("*.json"))


def test_uninstall_is_refused_while_a_daemon_serves(tmp_path):
    proc = DaemonProcess(tmp_path)
    proc.start()
    try:
        done = subprocess.run([*uninstall_command(proc)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "already serving" in done.stderr
        assert proc.client().health() == "SERVING"
    finally:
        proc.stop()


def uninstall_command(proc: DaemonProcess) -> list[str]:
    import sys

    return [sys.executable, "-m", "enforcer.cli", "daemon", "--uninstall", "--socket", proc.socket, *proc.dirs]


def test_a_changed_map_layout_is_refused_with_a_clear_message(tmp_path):
    proc = DaemonProcess(tmp_path)
    proc.pin_dir.mkdir()
    (proc.pin_dir / "maps-0123456789abcdef").mkdir()  # what a build with another layout left
    try:
        try:
            proc.start()
            raise AssertionError("the daemon started over another layout's state")
        except RuntimeError:
            pass
        assert proc.proc is not None and proc.proc.wait(timeout=10) == 1
        text = proc.log_text()
        assert "another map layout (0123456789abcdef" in text and "--uninstall" in text
    finally:
        (proc.pin_dir / "maps-0123456789abcdef").rmdir()
        proc.pin_dir.rmdir()
