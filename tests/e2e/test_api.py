"""The gRPC API over the real daemon: status codes, messages that name the
field, and bad requests that change nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from enforcer.client import EnforcerError
from enforcer.v1 import enforcer_pb2 as pb
from enforcer.v1 import enforcer_pb2_grpc as pb_grpc
from tests.e2e.harness.network import HOST4
from tests.e2e.harness.probes import Probe
from tests.e2e.test_network import connect, policy


def raw_stub(daemon: Any) -> pb_grpc.EnforcerStub:
    return pb_grpc.EnforcerStub(grpc.insecure_channel(f"unix:{daemon.socket}"))


def refused(client: Any, doc: Any) -> EnforcerError:
    with pytest.raises(EnforcerError) as info:
        client.apply(doc if isinstance(doc, pb.Policy) else _wire_unchecked(doc))
    return info.value


def _wire_unchecked(doc: dict[str, Any]) -> pb.Policy:
    """Build the wire message directly, bypassing the client's local validation,
    so the daemon's own checks are what is tested."""
    msg = pb.Policy(sandbox=doc.get("sandbox", ""))
    for kind, value in doc.get("target", {}).items():
        setattr(msg.target, kind, value)
    for rule in doc.get("network", {}).get("allow", []):
        wire_rule = msg.network.allow.add(to=rule.get("to", ""))
        for first, last in rule.get("ports", []):
            wire_rule.ports.add(first=first, last=last)
    msg.labels.update(doc.get("labels", {}))
    return msg


@pytest.mark.parametrize(
    ("doc", "field", "reason"),
    [
        ({"target": {"cgroup": "CG"}}, "sandbox", "is required"),
        ({"sandbox": "bad id!", "target": {"cgroup": "CG"}}, "sandbox", "not a valid sandbox id"),
        ({"sandbox": "x"}, "target", "is required"),
        ({"sandbox": "x", "target": {"cgroup": "/sys/fs/cgroup/no/such/cgroup"}}, "target.cgroup", "does not exist"),
        ({"sandbox": "x", "target": {"pid": 4194303}}, "target.pid", "no process"),
        ({"sandbox": "x", "target": {"container": "0123456789abcdef"}}, "target.container", "no cgroup found"),
        ({"sandbox": "x", "target": {"cgroup": "CG"}, "network": {"allow": [{"to": "10.0.0.0/33"}]}},
         "network.allow[0].to", "not an IPv4 or IPv6"),
        ({"sandbox": "x", "target": {"cgroup": "CG"}, "network": {"allow": [{"to": "10.1.2.3/8"}]}},
         "network.allow[0].to", "host bits set"),
        ({"sandbox": "x", "target": {"cgroup": "CG"}, "network": {"allow": [{"to": "10.0.0.1", "ports": [(0, 0)]}]}},
         "network.allow[0].ports[0]", "port 0 is out of range"),
        ({"sandbox": "x", "target": {"cgroup": "CG"},
          "network": {"allow": [{"to": "10.0.0.1", "ports": [(80, 70000)]}]}},
         "network.allow[0].ports[0]", "port 70000 is out of range"),
        ({"sandbox": "x", "target": {"cgroup": "CG"},
          "network": {"allow": [{"to": "10.0.0.1", "ports": [(443, 80)]}]}},
         "network.allow[0].ports[0]", "empty range"),
        ({"sandbox": "x", "target": {"cgroup": "CG"}, "labels": {"bad key!": "v"}}, "labels['bad key!']", "label names"),
    ],
)
def test_bad_policy_is_invalid_argument_naming_the_field(client, make_cgroup, doc, field, reason):
    cg = make_cgroup()
    before = client.list()
    if doc.get("target", {}).get("cgroup") == "CG":
        doc["target"]["cgroup"] = str(cg)
    error = refused(client, doc)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith(f"{field}: ")
    assert reason in error.details
    assert client.list() == before


def test_bad_enum_values_are_named(client, make_cgroup, sandbox_id):
    msg = _wire_unchecked({"sandbox": sandbox_id, "target": {"cgroup": str(make_cgroup())}})
    msg.mode = 7
    error = refused(client, msg)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.details.startswith("mode: ")
    msg.mode = pb.MODE_ENFORCE
    msg.network.allow.add(to=HOST4, protocol=42)
    error = refused(client, msg)
    assert error.details.startswith("network.allow[0].protocol: ")


def test_a_rejected_replace_keeps_the_old_policy_in_force(client, make_cgroup, sandbox_id, probe: Probe):
    cg = make_cgroup()
    applied = client.apply(policy(sandbox_id, cg, allow=[{"to": HOST4, "ports": [443]}]))
    bad = _wire_unchecked({"sandbox": sandbox_id, "target": {"cgroup": str(cg)},
                           "network": {"allow": [{"to": HOST4, "ports": [(443, 443)]}, {"to": "non sense"}]}})
    assert refused(client, bad).details.startswith("network.allow[1].to: ")
    # Too many port rules covering one address: refused at encoding, after validation.
    crowded = policy(sandbox_id, cg, allow=[{"to": HOST4, "ports": [1000 + 2 * i for i in range(17)]}])
    with pytest.raises(EnforcerError) as info:
        client.apply(crowded)
    error = info.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "at most 16" in error.details
    assert client.get(sandbox_id).generation == applied.applied.generation
    assert probe(cg, connect(HOST4, 443), connect(HOST4, 80)) == ["ECONNREFUSED", "EPERM"]


def test_same_id_for_another_cgroup_is_already_exists(client, make_cgroup, sandbox_id):
    first, second = make_cgroup("one"), make_cgroup("two")
    client.apply(policy(sandbox_id, first))
    error = refused(client, policy(sandbox_id, second))
    assert error.code == grpc.StatusCode.ALREADY_EXISTS and str(first) in error.details
    error = refused(client, policy(sandbox_id + "-b", first))
    assert error.code == grpc.StatusCode.ALREADY_EXISTS and "already guarded" in error.details
    assert client.get(sandbox_id).cgroup_path == str(first)


def test_nested_sandboxes_are_failed_precondition(client, make_cgroup, sandbox_id):
    outer = make_cgroup()
    inner = outer / "inner"
    inner.mkdir()
    client.apply(policy(sandbox_id, outer))
    error = refused(client, policy(sandbox_id + "-in", inner))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION and "cannot nest" in error.details
    client.remove(sandbox_id)
    client.apply(policy(sandbox_id + "-in", inner))
    error = refused(client, policy(sandbox_id, outer))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION


def test_root_cgroup_is_refused(client):
    from enforcer.cgroupfs import cgroup2_mount

    error = refused(client, {"sandbox": "root", "target": {"cgroup": str(cgroup2_mount())}})
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "root cgroup" in error.details


def test_targets_by_pid_and_container(client, make_cgroup, sandbox_id, probe: Probe):
    import subprocess

    from enforcer.cgroupfs import move_pid

    cg = make_cgroup()
    sleeper = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: move_pid(0, cg))
    try:
        applied = client.apply({"sandbox": sandbox_id, "target": {"pid": sleeper.pid}})
        assert applied.applied.cgroup_path == str(cg)
    finally:
        sleeper.kill()
        sleeper.wait()
    client.remove(sandbox_id)
    container = "4f2c" + "0" * 60
    scope = make_cgroup("system.slice") / f"docker-{container}.scope"
    scope.mkdir()
    applied = client.apply({"sandbox": sandbox_id, "target": {"container": container[:12]}})
    assert applied.applied.cgroup_path == str(scope)
    assert probe(scope, connect(HOST4, 443)) == ["EPERM"]


def test_get_list_remove_and_not_found(client, make_cgroup, sandbox_id):
    cg = make_cgroup()
    doc = policy(sandbox_id, cg, allow=[{"to": "10.0.0.0/8", "ports": [443, "8000-8100"], "protocol": "tcp"},
                                       {"to": "2001:db8::/32"}])
    applied = client.apply(doc).applied
    assert applied.cgroup_id == Path(cg).stat().st_ino
    got = client.get(sandbox_id)
    assert got.policy.network.allow[0].to == "10.0.0.0/8"
    assert [(p.first, p.last) for p in got.policy.network.allow[0].ports] == [(443, 443), (8000, 8100)]
    assert dict(got.policy.labels) == {"run": "ppo-7", "episode": "17"}
    assert sandbox_id in [p.policy.sandbox for p in client.list()]
    client.remove(sandbox_id)
    assert sandbox_id not in [p.policy.sandbox for p in client.list()]
    for call in (client.remove, client.get, client.stats):
        with pytest.raises(EnforcerError) as info:
            call(sandbox_id)
        assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(EnforcerError) as info:
        client.remove("")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_apply_without_a_policy_is_invalid_argument(daemon):
    with pytest.raises(grpc.RpcError) as info:
        raw_stub(daemon).ApplyPolicy(pb.ApplyPolicyRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_apply_whose_caller_gave_up_changes_nothing(daemon, client, make_cgroup, sandbox_id):
    """Deadlines: an apply whose caller's deadline has passed by the time of the
    kernel switch is rolled back. (gRPC rounds the daemon's deadline up to its
    1 ms timer, so a 1 us deadline lets the handler start; a 500-rule apply
    takes longer than that, so it reaches the switch after the deadline.)"""
    import time

    from enforcer.policy import parse_policy
    from enforcer.wire import policy_to_proto

    rules = [{"to": f"10.{i // 256}.{i % 256}.0/24", "ports": [443]} for i in range(500)]
    request = pb.ApplyPolicyRequest(policy=policy_to_proto(parse_policy(policy(sandbox_id, make_cgroup(), allow=rules))))
    for _ in range(10):
        with pytest.raises(grpc.RpcError) as info:
            raw_stub(daemon).ApplyPolicy(request, timeout=0.000001)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.5)  # any handler still running has reached its switch
    assert sandbox_id not in {p.policy.sandbox for p in client.list()}
    refusals = [e for e in daemon.log_events() if e["event"] == "request_refused" and "deadline" in e["reason"]]
    assert refusals  # the daemon's own check, not only the client's timer


def test_stream_filters_by_sandbox_and_labels(client, make_cgroup, sandbox_id, probe: Probe):
    from tests.e2e.harness.waits import wait_denials

    a, b = make_cgroup("a"), make_cgroup("b")
    client.apply({**policy(sandbox_id + "-a", a), "labels": {"episode": "1", "run": "r"}})
    client.apply({**policy(sandbox_id + "-b", b), "labels": {"episode": "2", "run": "r"}})
    probe(a, connect(HOST4, 1))
    probe(b, connect(HOST4, 2), connect(HOST4, 3))
    assert len(wait_denials(client, sandbox_id + "-b", 2)) == 2
    by_label = list(client.denial_events(labels={"episode": "2", "run": "r"}))
    assert [e.destination.port for e in by_label if e.sandbox.startswith(sandbox_id)] == [2, 3]
    both = list(client.denial_events(sandboxes=[sandbox_id + "-a", sandbox_id + "-b"]))
    assert [e.destination.port for e in both] == [1, 2, 3]


def test_follow_streams_new_denials_live(client, make_cgroup, sandbox_id, probe: Probe):
    import threading

    cg = make_cgroup()
    client.apply(policy(sandbox_id, cg))
    received: list[Any] = []
    stream = client.denial_events(sandboxes=[sandbox_id], follow=True)

    def consume() -> None:
        for event in stream:
            received.append(event)
            if len(received) == 3:
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    probe(cg, connect(HOST4, 10), connect(HOST4, 11), connect(HOST4, 12))
    thread.join(10)
    assert [e.destination.port for e in received] == [10, 11, 12]


def test_health_and_reflection(daemon):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(f"unix:{daemon.socket}")
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="enforcer.v1.Enforcer"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "enforcer.v1.Enforcer" in names


def test_a_sandbox_whose_cgroup_was_removed_can_be_applied_again_elsewhere(client, make_cgroup, sandbox_id,
                                                                          probe: Probe):
    first = make_cgroup("first")
    client.apply(policy(sandbox_id, first))
    first.rmdir()  # the container ended
    second = make_cgroup("second")
    applied = client.apply(policy(sandbox_id, second))
    assert applied.applied.cgroup_path == str(second) and not applied.replaced
    assert probe(second, connect(HOST4, 443)) == ["EPERM"]
    assert client.stats(sandbox_id).connect.refused == 1  # a fresh slot: counts start at zero
