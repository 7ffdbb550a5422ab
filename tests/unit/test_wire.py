"""Model <-> proto conversion, and wire messages validated like files."""

from __future__ import annotations

import pytest

from enforcer import wire
from enforcer.policy import PolicyError, parse_policy
from enforcer.v1 import enforcer_pb2 as pb


def test_round_trip():
    policy = parse_policy({
        "sandbox": "s", "target": {"pid": 42}, "labels": {"a": "1"}, "mode": "audit",
        "network": {"default": "allow", "allow": [{"to": "10.0.0.0/8", "ports": [1, "5-6"], "protocol": "udp"}],
                    "deny": [{"to": "fd00::1"}]},
    })
    assert wire.policy_from_proto(wire.policy_to_proto(policy)) == policy
    with_exec = parse_policy({"sandbox": "s", "target": {"pid": 42}, "devices": {"gpu": "allow"},
                              "exec": {"default": "allow", "allow": ["/usr/bin/git"], "deny": ["/usr/bin/ssh", "/tmp/"]},
                              "escalate": {"after": 20, "within": "10s", "action": "quarantine"}})
    assert wire.policy_from_proto(wire.policy_to_proto(with_exec)) == with_exec
    for target in ({"cgroup": "/a/b"}, {"cgroup": "/a/c", "create": True}, {"cgroup": "/a/d", "root": "/b/rootfs"},
                   {"container": "ab" * 32}):
        p = parse_policy({"sandbox": "s", "target": target})
        assert wire.policy_from_proto(wire.policy_to_proto(p)) == p


def test_unspecified_enums_take_documented_defaults():
    msg = pb.Policy(sandbox="s")
    msg.target.cgroup = "/x"
    msg.network.allow.add(to="10.0.0.1")
    policy = wire.policy_from_proto(msg)
    assert policy.mode.value == "enforce" and policy.network.default.value == "deny"
    assert policy.network.allow[0].protocol.value == "any"


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda m: m.target.ClearField("cgroup"), "target"),
        (lambda m: setattr(m, "sandbox", ""), "sandbox"),
        (lambda m: m.network.allow.add(to="10.0.0.1").ports.add(first=80, last=8), "network.allow[0].ports[0]"),
        (lambda m: m.network.deny.add(to=""), "network.deny[0].to"),
        (lambda m: setattr(m.network, "default", 9), "network.default"),
        (lambda m: m.exec.allow.append("bin/sh"), "exec.allow[0]"),
        (lambda m: setattr(m.devices, "gpu", 7), "devices.gpu"),
        (lambda m: setattr(m.escalate, "after", 0), "escalate.after"),
    ],
)
def test_bad_wire_fields_are_named_like_file_fields(build, field):
    msg = pb.Policy(sandbox="s")
    msg.target.cgroup = "/x"
    build(msg)
    with pytest.raises(PolicyError) as info:
        wire.policy_from_proto(msg)
    assert info.value.field == field
