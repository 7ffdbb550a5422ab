"""Sandbox policy: the model, its validation and the policy file format.

Pure Python: nothing here touches the kernel, the network or gRPC.
"""

from enforcer.policy.errors import PolicyError
from enforcer.policy.model import (
    DevicePolicy,
    DnsPolicy,
    Escalation,
    EscalationAction,
    ExecPolicy,
    Mode,
    NameRule,
    NetworkPolicy,
    NetworkRule,
    Policy,
    PortRange,
    Protocol,
    SyscallPolicy,
    Target,
    TargetKind,
    Upstream,
    Verdict,
)
from enforcer.policy.parse import (
    load_policy_file,
    parse_labels,
    parse_policy,
    policy_to_document,
    read_policy_document,
)

__all__ = [
    "DevicePolicy",
    "DnsPolicy",
    "Escalation",
    "EscalationAction",
    "ExecPolicy",
    "Mode",
    "NameRule",
    "NetworkPolicy",
    "NetworkRule",
    "Policy",
    "PolicyError",
    "PortRange",
    "Protocol",
    "SyscallPolicy",
    "Target",
    "TargetKind",
    "Upstream",
    "Verdict",
    "load_policy_file",
    "parse_labels",
    "parse_policy",
    "policy_to_document",
    "read_policy_document",
]
