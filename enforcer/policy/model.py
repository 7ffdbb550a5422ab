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
    # With a cgroup: the daemon makes it if it does not exist, and removes it
    # with the policy once nothing is left in it. A container runtime then
    # starts containers inside it (docker run --cgroup-parent), guarded from
    # their first instruction.
    create: bool = False
    # With a cgroup: the directory exec entries are resolved in (a container's
    # root filesystem, as an OCI hook finds it), instead of the host's root.
    root: str = ""

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
    # Its place in the document's list (names and addresses share it), so that a
    # refusal found later names the right field; not part of what the rule means.
    index: int = field(default=-1, compare=False)

    def port_ranges(self) -> tuple[PortRange, ...]:
        return self.ports or (ALL_PORTS,)


@dataclass(frozen=True)
class NameRule:
    """A host name: "pypi.org" matches itself; "*.pythonhosted.org" matches any
    name one or more labels below pythonhosted.org (not pythonhosted.org itself).
    Lowercase, without the trailing dot."""

    name: str
    ports: tuple[PortRange, ...] = ()  # empty: every port
    protocol: Protocol = Protocol.ANY

    def port_ranges(self) -> tuple[PortRange, ...]:
        return self.ports or (ALL_PORTS,)

    def matches(self, qname: str) -> bool:
        """``qname``: lowercase, no trailing dot."""
        if self.name.startswith("*."):
            return qname.endswith(self.name[1:])
        return qname == self.name


@dataclass(frozen=True)
class Upstream:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int = 53

    def __str__(self) -> str:
        if self.port == 53:
            return str(self.address)
        return f"[{self.address}]:{self.port}" if self.address.version == 6 else f"{self.address}:{self.port}"


@dataclass(frozen=True)
class DnsPolicy:
    """How names are resolved for a sandbox whose policy names hosts."""

    upstream: tuple[Upstream, ...] = ()  # empty: the host's resolvers (/etc/resolv.conf)
    grace: float = 30.0  # seconds an answered address stays allowed past its TTL


@dataclass(frozen=True)
class NetworkPolicy:
    default: Verdict = Verdict.DENY
    allow: tuple[NetworkRule, ...] = ()
    deny: tuple[NetworkRule, ...] = ()
    allow_names: tuple[NameRule, ...] = ()  # addresses these resolve to are allowed (ports, protocol)
    deny_names: tuple[NameRule, ...] = ()   # queries for these are refused, whatever allows them
    dns: DnsPolicy | None = None  # set when the policy names hosts or has a dns section

    @property
    def by_name(self) -> bool:
        """DNS goes through the daemon's forwarder (port 53 is redirected)."""
        return self.dns is not None

    def name_allowed(self, qname: str) -> tuple[NameRule, ...] | None:
        """The allow rules matching ``qname``, or None if the name is refused
        (no allow rule matches, or a deny rule does)."""
        if any(rule.matches(qname) for rule in self.deny_names):
            return None
        matched = tuple(rule for rule in self.allow_names if rule.matches(qname))
        return matched or None


@dataclass(frozen=True)
class ExecPolicy:
    """Entries are absolute paths; one ending in "/" covers everything below that
    directory. Deny wins over allow."""

    default: Verdict = Verdict.DENY
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyscallPolicy:
    """System calls by name (this architecture's). Deny wins over allow. Every
    sandbox refuses ``bpf`` and ``perf_event_open`` unless ``allow`` names them
    (see :data:`DENIED_BY_DEFAULT`)."""

    default: Verdict = Verdict.ALLOW
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def denied(self) -> tuple[str, ...]:
        """Names refused whatever the default: the deny list and those denied by default."""
        implied = tuple(n for n in DENIED_BY_DEFAULT if n not in self.allow and n not in self.deny)
        return (*self.deny, *implied)


# A sandboxed task could detach or blind the enforcer's own programs with these.
DENIED_BY_DEFAULT = ("bpf", "perf_event_open")


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
    syscalls: SyscallPolicy = field(default_factory=SyscallPolicy)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)
