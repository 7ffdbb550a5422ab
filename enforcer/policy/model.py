"""The sandbox policy model. Instances are immutable and always valid: build them
with :func:`enforcer.policy.parse_policy`, which is where validation lives."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Mode(enum.Enum):
    ENFORCE = "enforce"
    AUDIT = "audit"


class Verdict(enum.Enum):
    DENY = "deny"
    ALLOW = "allow"


class Protocol(enum.Enum):
    ANY = "any"
    TCP = "tcp"
    UDP = "udp"


class TargetKind(enum.Enum):
    CGROUP = "cgroup"
    PID = "pid"
    CONTAINER = "container"


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    value: str  # a cgroup path, a pid in decimal, or a container id

    def describe(self) -> str:
        return f"{self.kind.value} {self.value}"


@dataclass(frozen=True, order=True)
class PortRange:
    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


ALL_PORTS = PortRange(0, 65535)


@dataclass(frozen=True)
class NetworkRule:
    to: IPNetwork
    ports: tuple[PortRange, ...] = ()  # empty: every port
    protocol: Protocol = Protocol.ANY

    def port_ranges(self) -> tuple[PortRange, ...]:
        return self.ports or (ALL_PORTS,)


@dataclass(frozen=True)
class NetworkPolicy:
    default: Verdict = Verdict.DENY
    allow: tuple[NetworkRule, ...] = ()
    deny: tuple[NetworkRule, ...] = ()


@dataclass(frozen=True)
class ExecPolicy:
    """Entries are absolute paths; one ending in "/" covers everything below that
    directory. Deny wins over allow."""

    default: Verdict = Verdict.DENY
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class DevicePolicy:
    gpu: Verdict = Verdict.DENY  # NVIDIA, DRI/render and AMD KFD device nodes


class EscalationAction(enum.Enum):
    QUARANTINE = "quarantine"  # every network call refused, in the kernel
    FREEZE = "freeze"          # cgroup.freeze
    KILL = "kill"              # cgroup.kill


@dataclass(frozen=True)
class Escalation:
    """Fires once when ``after`` denials fall within ``within`` seconds."""

    after: int
    within: float
    action: EscalationAction


@dataclass(frozen=True)
class Policy:
    sandbox: str
    target: Target
    labels: tuple[tuple[str, str], ...] = ()  # sorted pairs, so policies compare and hash
    mode: Mode = Mode.ENFORCE
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    exec: ExecPolicy | None = None  # None: exec is not judged
    devices: DevicePolicy = field(default_factory=DevicePolicy)
    escalate: Escalation | None = None

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)
