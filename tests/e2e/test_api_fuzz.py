"""Property tests against the real daemon: arbitrary ApplyPolicy messages and
arbitrary bytes on every method. The daemon never crashes, answers every bad
request with a status naming what is wrong, and never applies part of one."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcer.v1 import enforcer_pb2 as pb
from enforcer.v1 import enforcer_pb2_grpc as pb_grpc
from tests.unit.test_fuzz_policy import assert_clear_text, wire_messages

REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED}
METHODS = ["ApplyPolicy", "RemovePolicy", "GetPolicy", "UpdateLabels", "Release", "ListPolicies", "AddContainer",
           "RemoveContainer", "GetStats", "GetStatus"]


@pytest.fixture(scope="module")
def channel(daemon):
    with grpc.insecure_channel(f"unix:{daemon.socket}") as ch:
        yield ch


@pytest.fixture(scope="module")
def fuzz_cgroup(cgroup_root: Path, session_cleanup):
    from enforcer.cgroupfs import remove_cgroup

    path = cgroup_root / "api-fuzz"
    path.mkdir()
    session_cleanup.add(lambda: remove_cgroup(path))
    return path


def applied(stub: pb_grpc.EnforcerStub) -> list[bytes]:
    return sorted(p.SerializeToString() for p in stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10).policies)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(msg=wire_messages(), real_target=st.booleans())
def test_any_apply_message_is_applied_whole_or_refused_by_field(channel, fuzz_cgroup, msg, real_target):
    stub = pb_grpc.EnforcerStub(channel)
    if real_target:
        msg.target.cgroup = str(fuzz_cgroup)  # reach the checks after target resolution too
    before = applied(stub)
    try:
        response = stub.ApplyPolicy(pb.ApplyPolicyRequest(policy=msg), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in REFUSALS, (exc.code(), exc.details())
        assert_clear_text(exc.details() or "")
        assert applied(stub) == before  # nothing of it stayed
        return
    stub.RemovePolicy(pb.RemovePolicyRequest(sandbox=response.applied.policy.sandbox), timeout=10)
    assert applied(stub) == before


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(METHODS), body=st.binary(max_size=300))
def test_arbitrary_bytes_on_any_method_are_refused_and_the_daemon_goes_on(channel, method, body):
    call = channel.unary_unary(f"/enforcer.v1.Enforcer/{method}", request_serializer=None,
                               response_deserializer=None)
    stub = pb_grpc.EnforcerStub(channel)
    before = applied(stub)
    try:
        call(body, timeout=10)
    except grpc.RpcError as exc:
        # Bytes that do not parse are refused by gRPC itself; those that parse are judged as above.
        assert exc.code() in REFUSALS | {grpc.StatusCode.INTERNAL}, (exc.code(), exc.details())
        if exc.code() == grpc.StatusCode.INTERNAL:
            assert "deserializ" in (exc.details() or "").lower(), exc.details()
    after = applied(stub)
    if method == "ApplyPolicy" and after != before:  # a message that happened to be a whole valid policy
        for policy in stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10).policies:
            if policy.SerializeToString() not in before:
                stub.RemovePolicy(pb.RemovePolicyRequest(sandbox=policy.policy.sandbox), timeout=10)
    assert stub.GetStatus(pb.GetStatusRequest(), timeout=10).sandboxes >= 0
