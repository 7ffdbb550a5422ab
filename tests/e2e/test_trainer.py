"""What the trainer relies on, end to end: labels as they were when the kernel
refused, a resumable stream that neither repeats nor skips, gap records, exact
counts with reset, and escalation firing exactly at its threshold."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.e2e.harness.daemon import DaemonProcess
from tests.e2e.harness.env import patience
from tests.e2e.harness.network import HOST4
from tests.e2e.harness.probes import PROBE, Probe
from tests.e2e.harness.waits import wait_denials
from tests.e2e.test_network import connect, policy, sendto

pytestmark = pytest.mark.kernel  # the outcome depends on the kernel: runs on each (make test-kernels)


def refuse(probe: Probe, cgroup: Path, count: int = 1) -> None:
    assert probe(cgroup, {**sendto(HOST4, 9), "repeat": count}) == [f"EPERM*{count}"]


def events_of(client: Any, sandbox: str, count: int) -> list[Any]:
    return wait_denials(client, sandbox, count)


def test_labels_are_those_current_when_the_kernel_refused(client, make_cgroup, sandbox_id, probe):
    cgroup = make_cgroup()
    generation = client.apply(policy(sandbox_id, cgroup)).applied.generation
    refuse(probe, cgroup)
    applied = client.set_labels(sandbox_id, episode="18", step="0")
    assert dict(applied.policy.labels) == {"run": "ppo-7", "episode": "18", "step": "0"}
    refuse(probe, cgroup)
    client.set_labels(sandbox_id, {"episode": "19"}, replace=True)
    refuse(probe, cgroup)
    events = events_of(client, sandbox_id, 3)
    assert [dict(e.labels) for e in events] == [
        {"run": "ppo-7", "episode": "17"},
        {"run": "ppo-7", "episode": "18", "step": "0"},
        {"episode": "19"},
    ]
    assert dict(client.get(sandbox_id).policy.labels) == {"episode": "19"}
    assert client.get(sandbox_id).generation == generation  # the rules were not re-applied


def test_bad_labels_are_refused_by_field_and_change_nothing(client, make_cgroup, sandbox_id):
    from enforcer.client import EnforcerError

    client.apply(policy(sandbox_id, make_cgroup()))
    with pytest.raises(EnforcerError) as refused:
        client.set_labels(sandbox_id, {"bad key": "x"})
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details.startswith("labels['bad key']: ")
    assert dict(client.get(sandbox_id).policy.labels) == {"run": "ppo-7", "episode": "17"}
    with pytest.raises(EnforcerError) as missing:
        client.set_labels("no-such-sandbox", episode="1")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


def test_resume_after_reconnect_repeats_and_loses_nothing(client, make_cgroup, sandbox_id, probe):
    cgroup = make_cgroup()
    client.apply(policy(sandbox_id, cgroup))
    refuse(probe, cgroup, 5)
    events_of(client, sandbox_id, 5)
    first_batches = list(client.denials(sandboxes=[sandbox_id]))
    seen = [e.seq for b in first_batches for e in b.denials]
    resume_at = first_batches[-1].next_seq
    refuse(probe, cgroup, 7)
    deadline = time.monotonic() + patience(10)
    later: list[int] = []
    while len(later) < 7 and time.monotonic() < deadline:
        later = [e.seq for b in client.denials(sandboxes=[sandbox_id], since=resume_at) for e in b.denials]
    assert len(seen) == 5 and len(later) == 7
    assert not set(seen) & set(later)
    assert later == sorted(later) and min(later) >= resume_at


def test_a_subscriber_behind_retention_gets_a_gap_record(tmp_path, make_cgroup, sandbox_id, probe):
    proc = DaemonProcess(tmp_path, "--retention", "10", "--events-per-sec", "0")
    proc.start()
    try:
        with proc.client() as enf:
            cgroup = make_cgroup()
            enf.apply(policy(sandbox_id, cgroup))
            refuse(probe, cgroup, 25)
            deadline = time.monotonic() + patience(10)
            while enf.stats(sandbox_id).sendmsg.refused < 25 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # let the drain publish the last of them
            batches = list(enf.denials(since=1))
        assert batches[0].HasField("gap")
        gap = batches[0].gap
        assert (gap.first_seq, gap.missed) == (1, 15) and gap.last_seq == 15
        seqs = [e.seq for b in batches for e in b.denials]
        assert seqs == list(range(16, 26))
    finally:
        assert proc.stop() == 0


def test_stats_are_exact_and_reset_between_episodes(client, make_cgroup, sandbox_id, probe):
    cgroup = make_cgroup()
    client.apply(policy(sandbox_id, cgroup))
    refuse(probe, cgroup, 3)
    first = client.stats(sandbox_id, reset=True)
    assert first.sendmsg.refused == 3
    refuse(probe, cgroup, 2)
    assert probe(cgroup, connect(HOST4, 22)) == ["EPERM"]
    second = client.stats(sandbox_id)
    assert (second.sendmsg.refused, second.connect.refused) == (2, 1)
    assert second.since_unix_ns > first.since_unix_ns
    # Under load (over the event budget, so most are suppressed) the counts stay exact.
    refuse(probe, cgroup, 20_000)
    loaded = client.stats(sandbox_id)
    assert loaded.sendmsg.refused == 20_002
    assert loaded.events_suppressed > 0


def escalation_policy(sandbox: str, cgroup: Path, action: str, after: int = 5, **top: Any) -> dict[str, Any]:
    return policy(sandbox, cgroup, allow=[{"to": HOST4, "ports": [443], "protocol": "tcp"}],
                  escalate={"after": after, "within": "30s", "action": action}, **top)


def escalations(client: Any, sandbox: str) -> list[Any]:
    from enforcer.v1 import enforcer_pb2 as pb

    return [e for e in client.denial_events(sandboxes=[sandbox]) if e.kind == pb.DENIAL_KIND_ESCALATION]


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + patience(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_quarantine_fires_exactly_at_the_threshold_and_release_lifts_it(client, make_cgroup, sandbox_id, probe):
    from enforcer.v1 import enforcer_pb2 as pb

    cgroup = make_cgroup()
    client.apply(escalation_policy(sandbox_id, cgroup, "quarantine"))
    allowed = connect(HOST4, 443)  # nobody listens: ECONNREFUSED means the kernel let it through
    refuse(probe, cgroup, 4)
    assert probe(cgroup, allowed) == ["ECONNREFUSED"]
    time.sleep(0.3)
    assert escalations(client, sandbox_id) == [] and not client.get(sandbox_id).quarantined
    refuse(probe, cgroup, 1)  # the 5th denial
    assert probe(cgroup, allowed) == ["EPERM"]  # quarantined in the kernel, before the daemon knew
    assert wait_for(lambda: client.get(sandbox_id).quarantined)
    [event] = escalations(client, sandbox_id)
    assert event.escalation.action == pb.ESCALATION_ACTION_QUARANTINE and event.escalation.acted
    assert (event.escalation.after, event.escalation.denials) == (5, 5)
    # Re-applying (or relabelling) does not lift it; Release does.
    client.apply(escalation_policy(sandbox_id, cgroup, "quarantine"))
    client.set_labels(sandbox_id, step="9")
    assert probe(cgroup, allowed) == ["EPERM"]
    client.release(sandbox_id)
    assert probe(cgroup, allowed) == ["ECONNREFUSED"]
    assert not client.get(sandbox_id).quarantined


def start_prober(netns: str, cgroup: Path, refusals: int, then_sleep: float) -> subprocess.Popen[str]:
    from enforcer.cgroupfs import move_pid

    ops = [{**sendto(HOST4, 9), "repeat": refusals}, {"op": "sleep", "seconds": then_sleep}]
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, str(PROBE)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, preexec_fn=lambda: move_pid(0, cgroup))
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(ops))
    proc.stdin.close()
    return proc


def frozen(cgroup: Path) -> bool:
    return "frozen 1" in (cgroup / "cgroup.events").read_text()


def test_freeze_fires_at_the_threshold_and_release_thaws(client, make_cgroup, sandbox_id, probe, netns):
    cgroup = make_cgroup()
    client.apply(escalation_policy(sandbox_id, cgroup, "freeze", after=3))
    refuse(probe, cgroup, 2)
    time.sleep(0.3)
    assert not frozen(cgroup) and escalations(client, sandbox_id) == []
    prober = start_prober(netns, cgroup, refusals=1, then_sleep=1)
    try:
        assert wait_for(lambda: frozen(cgroup))
        assert client.get(sandbox_id).frozen
        time.sleep(1.5)
        assert prober.poll() is None  # frozen: its sleep cannot end
        client.release(sandbox_id)
        assert not frozen(cgroup)
        assert prober.wait(timeout=10) == 0
    finally:
        prober.kill()
    [event] = escalations(client, sandbox_id)
    assert event.escalation.denials == 3


def test_kill_fires_at_the_threshold(client, make_cgroup, sandbox_id, probe, netns):
    cgroup = make_cgroup()
    client.apply(escalation_policy(sandbox_id, cgroup, "kill", after=3))
    refuse(probe, cgroup, 2)
    prober = start_prober(netns, cgroup, refusals=1, then_sleep=30)
    try:
        assert prober.wait(timeout=10) == -9
    finally:
        prober.kill()
    assert wait_for(lambda: not (cgroup / "cgroup.procs").read_text().strip())
    [event] = escalations(client, sandbox_id)
    assert event.escalation.denials == 3 and event.escalation.acted


def test_audit_mode_reports_an_escalation_and_does_nothing(client, make_cgroup, sandbox_id, probe):
    cgroup = make_cgroup()
    client.apply(escalation_policy(sandbox_id, cgroup, "quarantine", after=2, mode="audit"))
    assert probe(cgroup, {**sendto(HOST4, 9), "repeat": 2}) == ["OK*2"]
    assert wait_for(lambda: len(escalations(client, sandbox_id)) == 1)
    [event] = escalations(client, sandbox_id)
    assert not event.escalation.acted
    assert probe(cgroup, connect(HOST4, 443)) == ["ECONNREFUSED"]
    assert not client.get(sandbox_id).quarantined


@pytest.mark.parametrize(("escalate", "field"), [
    ({"after": 0, "within": "1s", "action": "kill"}, "escalate.after"),
    ({"after": 257, "within": "1s", "action": "kill"}, "escalate.after"),
    ({"after": 3, "within": "soon", "action": "kill"}, "escalate.within"),
    ({"after": 3, "within": 0, "action": "kill"}, "escalate.within"),
    ({"after": 3, "within": "1s", "action": "reboot"}, "escalate.action"),
    ({"after": 3, "within": "1s"}, "escalate.action"),
])
def test_bad_escalations_are_refused_by_field(client, make_cgroup, sandbox_id, escalate, field):
    from enforcer.policy import PolicyError

    with pytest.raises(PolicyError) as refused:
        client.apply(policy(sandbox_id, make_cgroup(), escalate=escalate))
    assert refused.value.field == field


def test_a_subscriber_that_stops_reading_slows_no_one(tmp_path, make_cgroup, sandbox_id, probe):
    """A follower that stops reading (its gRPC flow-control window fills) holds up
    neither the kernel drain nor another subscriber."""
    import threading

    proc = DaemonProcess(tmp_path, "--events-per-sec", "0")
    proc.start()
    release = threading.Event()
    try:
        with proc.client() as enf, proc.client() as stalled:
            cgroup = make_cgroup()
            enf.apply(policy(sandbox_id, cgroup))

            def read_one_batch_then_stall() -> None:
                for _batch in stalled.denials(sandboxes=[sandbox_id], follow=True):
                    release.wait(60)
                    return

            threading.Thread(target=read_one_batch_then_stall, daemon=True).start()
            refuse(probe, cgroup, 20_000)
            assert wait_for(lambda: sum(len(b.denials) for b in enf.denials(sandboxes=[sandbox_id])) == 20_000,
                            timeout=30)
            assert enf.stats(sandbox_id).events_lost == 0
    finally:
        release.set()
        assert proc.stop() == 0
