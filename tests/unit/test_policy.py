"""The policy model and file format: valid documents, and every kind of bad
input refused with the field path and the reason."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from enforcer.policy import (
    DevicePolicy,
    ExecPolicy,
    Mode,
    NetworkRule,
    PolicyError,
    PortRange,
    Protocol,
    TargetKind,
    Verdict,
    load_policy_file,
    parse_policy,
    policy_to_document,
)

EXAMPLE = """
sandbox: rollout-17              # id chosen by the orchestrator
target: {cgroup: /sys/fs/cgroup/rollouts/17}
labels: {run: ppo-7, episode: "17"}
mode: enforce
exec:
  default: deny
  allow: [/usr/bin/python3, /usr/bin/git, /usr/lib/git-core/]
  deny: [/usr/bin/ssh]
devices:
  gpu: deny
network:
  default: deny
  allow:
    - to: 10.0.0.0/8
      ports: [443, "8000-8100"]
      protocol: tcp
    - to: 10.0.0.2
      ports: [53]
      protocol: udp
    - to: 2001:db8::/32
  deny: []
"""


def base(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"sandbox": "s1", "target": {"cgroup": "/sys/fs/cgroup/x"}}
    doc.update(overrides)
    return doc


def test_example_file_parses(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(EXAMPLE)
    policy = load_policy_file(path)
    assert policy.sandbox == "rollout-17"
    assert policy.target.kind is TargetKind.CGROUP
    assert policy.label_map == {"run": "ppo-7", "episode": "17"}
    assert policy.mode is Mode.ENFORCE
    assert policy.network.default is Verdict.DENY
    assert policy.network.allow[0] == NetworkRule(
        ipaddress.ip_network("10.0.0.0/8"), (PortRange(443, 443), PortRange(8000, 8100)), Protocol.TCP)
    assert policy.network.allow[2].protocol is Protocol.ANY and policy.network.allow[2].ports == ()
    assert policy.exec == ExecPolicy(Verdict.DENY, ("/usr/bin/python3", "/usr/bin/git", "/usr/lib/git-core/"),
                                     ("/usr/bin/ssh",))
    assert policy.devices == DevicePolicy(Verdict.DENY)
    assert parse_policy(policy_to_document(policy)) == policy


def test_json_file_parses_and_document_round_trips(tmp_path):
    path = tmp_path / "p.json"
    policy = parse_policy(base(network={"allow": [{"to": "::1", "ports": ["1-2", 9]}]}, mode="audit"))
    path.write_text(json.dumps(policy_to_document(policy)))
    assert load_policy_file(path) == policy


def test_defaults():
    policy = parse_policy(base())
    assert policy.mode is Mode.ENFORCE and policy.network.default is Verdict.DENY
    assert policy.network.allow == () and policy.labels == ()
    assert policy.exec is None  # no exec section: exec is not judged
    assert policy.devices.gpu is Verdict.DENY  # GPU only when granted
    assert parse_policy(base(exec={})).exec == ExecPolicy(Verdict.DENY, (), ())


def test_escalation_durations_and_round_trip():
    from enforcer.policy import Escalation, EscalationAction
    from enforcer.policy.parse import MAX_ESCALATE_AFTER

    for text, seconds in (("500ms", 0.5), ("10s", 10.0), ("2m", 120.0), ("1h", 3600.0), (7, 7.0), (1.5, 1.5)):
        policy = parse_policy(base(escalate={"after": 20, "within": text, "action": "freeze"}))
        assert policy.escalate == Escalation(20, seconds, EscalationAction.FREEZE)
        assert parse_policy(policy_to_document(policy)) == policy
    from enforcer.kernel import layout

    assert MAX_ESCALATE_AFTER == layout.ESCALATE_MAX


def test_exec_path_limit_matches_the_kernel_key():
    from enforcer.kernel import layout
    from enforcer.policy.parse import MAX_EXEC_PATH

    assert MAX_EXEC_PATH == layout.PATH_MAX - 1  # the key keeps the NUL of a file entry
    assert parse_policy(base(exec={"allow": ["/" + "a" * (MAX_EXEC_PATH - 1)]})).exec is not None


@pytest.mark.parametrize(
    ("doc", "field", "reason"),
    [
        ([], "", "must be a policy"),
        (base(extra=1), "extra", "unknown field"),
        ({"target": {"cgroup": "/x"}}, "sandbox", "is required"),
        (base(sandbox="-x"), "sandbox", "not a valid sandbox id"),
        (base(sandbox="x" * 129), "sandbox", "not a valid sandbox id"),
        (base(target=None), "target", "is required"),
        (base(target={"cgroup": "/a", "pid": 3}), "target", "exactly one of cgroup, pid, container (got cgroup, pid)"),
        (base(target={}), "target", "exactly one"),
        (base(target={"vm": "x"}), "target.vm", "unknown field"),
        (base(target={"pid": 0}), "target.pid", "must be a process id (1-4194304)"),
        (base(target={"pid": True}), "target.pid", "must be a process id (1-4194304)"),
        (base(target={"cgroup": ""}), "target.cgroup", "non-empty string"),
        (base(target={"container": "XYZ"}), "target.container", "not a container id"),
        (base(target={"cgroup": "/a", "create": "yes"}), "target.create", "must be true or false"),
        (base(target={"pid": 3, "create": True}), "target.create", "a cgroup target only"),
        (base(target={"cgroup": "/a", "root": "rootfs"}), "target.root", "must be an absolute directory path"),
        (base(target={"container": "ab" * 6, "root": "/r"}), "target.root", "a cgroup target only"),
        (base(target={"cgroup": "rollouts/../../etc", "create": True}), "target.cgroup", "must not contain '..'"),
        (base(labels={"k": [1]}), "labels.k", "label values are strings"),
        (base(labels={"": "v"}), "labels['']", "label names"),
        (base(mode="strict"), "mode", "must be one of enforce, audit"),
        (base(network=[]), "network", "must be a network policy"),
        (base(network={"default": "maybe"}), "network.default", "must be one of deny, allow"),
        (base(network={"allow": {"to": "1.2.3.4"}}), "network.allow", "must be a list"),
        (base(network={"allow": [{"to": "1.2.3.4", "port": 1}]}), "network.allow[0].port", "unknown field"),
        (base(network={"allow": [{}]}), "network.allow[0].to", "is required"),
        (base(network={"allow": [{"to": "exa mple.com"}]}), "network.allow[0].to", "not an IPv4 or IPv6"),
        (base(network={"allow": [{"to": "-bad.example"}]}), "network.allow[0].to", "or host name"),
        (base(network={"allow": [{"to": "a." * 127 + "org"}]}), "network.allow[0].to", "at most 253"),
        (base(network={"deny": [{"to": "evil.example", "ports": [443]}]}), "network.deny[0].ports", "refuses every query"),
        (base(network={"dns": {"upstream": ["resolver.example"]}}), "network.dns.upstream[0]", "not a resolver address"),
        (base(network={"dns": {"upstream": ["10.0.0.2:70000"]}}), "network.dns.upstream[0]", "out of range"),
        (base(network={"dns": {"upstream": ["10.0.0.2"] * 9}}), "network.dns.upstream", "at most 8"),
        (base(network={"dns": {"grace": "2h"}}), "network.dns.grace", "from 0 to 3600s"),
        (base(network={"dns": {"ttl": 5}}), "network.dns.ttl", "unknown field"),
        (base(network={"allow": [{"to": "10.0.0.0/33"}]}), "network.allow[0].to", "not an IPv4 or IPv6"),
        (base(network={"allow": [{"to": "10.0.0.1/8"}]}), "network.allow[0].to", "did you mean 10.0.0.0/8"),
        (base(network={"allow": [{"to": 10}]}), "network.allow[0].to", "must be an address, CIDR or host name string"),
        (base(network={"deny": [{"to": "::1", "ports": [0]}]}), "network.deny[0].ports[0]", "port 0 is out of range"),
        (base(network={"allow": [{"to": "::1", "ports": [65536]}]}), "network.allow[0].ports[0]", "out of range"),
        (base(network={"allow": [{"to": "::1", "ports": [1, "9-3"]}]}), "network.allow[0].ports[1]", "empty range"),
        (base(network={"allow": [{"to": "::1", "ports": ["1-99999"]}]}), "network.allow[0].ports[0]", "out of range"),
        (base(network={"allow": [{"to": "::1", "ports": ["http"]}]}), "network.allow[0].ports[0]", "must be a port"),
        (base(network={"allow": [{"to": "::1", "ports": [True]}]}), "network.allow[0].ports[0]", "must be a port"),
        (base(network={"allow": [{"to": "::1", "ports": []}]}), "network.allow[0].ports", "must not be empty"),
        (base(network={"allow": [{"to": "::1", "protocol": "icmp"}]}), "network.allow[0].protocol", "tcp, udp"),
        (base(exec=[]), "exec", "must be an exec policy"),
        (base(exec={"default": "sometimes"}), "exec.default", "must be one of deny, allow"),
        (base(exec={"allow": "/usr/bin/git"}), "exec.allow", "must be a list of absolute paths"),
        (base(exec={"allow": ["/usr/bin/git", 3]}), "exec.allow[1]", "must be an absolute path"),
        (base(exec={"deny": ["ssh"]}), "exec.deny[0]", "not an absolute path"),
        (base(exec={"deny": ["/usr/bin/../bin/ssh"]}), "exec.deny[0]", "must be a plain path"),
        (base(exec={"deny": ["/usr/./bin/ssh"]}), "exec.deny[0]", "must be a plain path"),
        (base(exec={"deny": ["//usr/bin/ssh"]}), "exec.deny[0]", "must be a plain path"),
        (base(exec={"deny": ["/usr//bin/"]}), "exec.deny[0]", "must be a plain path"),
        (base(exec={"deny": ["/a\0b"]}), "exec.deny[0]", "must not contain NUL"),
        (base(exec={"allow": ["/" + "a" * 243]}), "exec.allow[0]", "longer than 243 bytes"),
        (base(exec={"allow": ["/x"] * 10_001}), "exec.allow", "at most 10000 entries"),
        (base(exec={"run": []}), "exec.run", "unknown field"),
        (base(devices={"gpu": "yes"}), "devices.gpu", "must be one of deny, allow"),
        (base(escalate=[]), "escalate", "must be an escalation"),
        (base(escalate={"after": 3, "within": "1s", "action": "kill", "x": 1}), "escalate.x", "unknown field"),
        (base(escalate={"after": True, "within": "1s", "action": "kill"}), "escalate.after", "whole number"),
        (base(escalate={"after": 3, "within": "1 day", "action": "kill"}), "escalate.within", "a duration"),
        (base(escalate={"after": 3, "within": 90_000, "action": "kill"}), "escalate.within", "at most 86400s"),
        (base(devices={"tpu": "allow"}), "devices.tpu", "unknown field"),
    ],
)
def test_bad_input_names_field_and_reason(doc, field, reason):
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    assert info.value.field == field
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{field}: " if field else reason[:5])


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sandbox: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML or JSON"):
        load_policy_file(bad)


def test_integer_label_values_become_strings():
    assert parse_policy(base(labels={"episode": 17})).label_map == {"episode": "17"}


def test_a_single_port_may_be_written_without_a_list():
    rule = parse_policy(base(network={"allow": [{"to": "10.0.0.1", "ports": 443}]})).network.allow[0]
    assert rule.ports == (PortRange(443, 443),)
