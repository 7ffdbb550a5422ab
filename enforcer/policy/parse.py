"""Policy documents (the YAML/JSON a user writes) to and from the model.

This is the only place a policy is validated. The gRPC layer turns a wire message
into a document and comes through here too, so a bad field is reported with the same
path (``network.allow[1].to``) whichever way the policy arrived.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from enforcer.policy.errors import PolicyError
from enforcer.policy.model import (
    DevicePolicy,
    DnsPolicy,
    Escalation,
    EscalationAction,
    ExecPolicy,
    IPNetwork,
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
from enforcer.policy.syscalls import SYSCALL_FIELDS, parse_syscall_policy

SANDBOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
CONTAINER_ID = re.compile(r"^[0-9a-f]{12,64}$")
MAX_LABELS = 64
MAX_LABEL_VALUE = 256
MAX_RULES = 100_000
MAX_PORT_RANGES = 64
MAX_EXEC_ENTRIES = 10_000
# Longest exec entry in bytes: the kernel's path key holds ENF_PATH_MAX (bpf/enforcer.h)
# bytes with the NUL (tests/unit/test_policy.py checks the two agree).
MAX_EXEC_PATH = 243
# Largest escalation threshold: the kernel keeps the times of the last ENF_ESCALATE_MAX
# denials (bpf/enforcer.h; tests/unit/test_policy.py checks the two agree).
MAX_ESCALATE_AFTER = 256
MAX_ESCALATE_WITHIN = 86_400.0
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_TOP_FIELDS = ("sandbox", "target", "labels", "mode", "network", "exec", "devices", "escalate", "syscalls")
_ESCALATE_FIELDS = ("after", "within", "action")
_NETWORK_FIELDS = ("default", "allow", "deny", "dns")
_DNS_FIELDS = ("upstream", "grace")
MAX_UPSTREAMS = 8
MAX_DNS_GRACE = 3600.0
DEFAULT_DNS_GRACE = 30.0
# A host name as DNS spells it (RFC 1035 labels; '_' too, as service names use it).
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
HOST_NAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")
MAX_HOST_NAME = 253
_EXEC_FIELDS = ("default", "allow", "deny")
_DEVICE_FIELDS = ("gpu",)
_RULE_FIELDS = ("to", "ports", "protocol")
_TARGET_FIELDS = (*(k.value for k in TargetKind), "create", "root")
# Every field a policy document may have, by where it sits (docs/policy.md names each one).
FIELDS: dict[str, tuple[str, ...]] = {
    "": _TOP_FIELDS, "target": _TARGET_FIELDS, "network": _NETWORK_FIELDS, "network.allow[]": _RULE_FIELDS,
    "network.dns": _DNS_FIELDS, "exec": _EXEC_FIELDS, "devices": _DEVICE_FIELDS, "escalate": _ESCALATE_FIELDS,
    "syscalls": SYSCALL_FIELDS,
}


def load_policy_file(path: str | Path) -> Policy:
    return parse_policy(read_policy_document(path))


def read_policy_document(path: str | Path) -> Any:
    """Read a YAML or JSON policy file (JSON is YAML, so one parser serves both)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PolicyError("", f"cannot read policy file {path}: {exc.strerror}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError("", f"{path} is not valid YAML or JSON: {exc}") from exc
    return doc


def parse_policy(doc: Any) -> Policy:
    _require_mapping(doc, "", "a policy")
    _refuse_unknown(doc, _TOP_FIELDS, "")
    raw_network = doc.get("network")
    network = NetworkPolicy() if raw_network is None else _parse_network(raw_network, "network")
    raw_exec = doc.get("exec")
    raw_devices = doc.get("devices")
    raw_escalate = doc.get("escalate")
    raw_syscalls = doc.get("syscalls")
    return Policy(
        sandbox=_parse_sandbox_id(doc.get("sandbox"), "sandbox"),
        target=_parse_target(doc.get("target"), "target"),
        labels=parse_labels(doc.get("labels"), "labels"),
        mode=_parse_enum(doc.get("mode", "enforce"), Mode, "mode"),
        network=network,
        exec=None if raw_exec is None else _parse_exec(raw_exec, "exec"),
        devices=DevicePolicy() if raw_devices is None else _parse_devices(raw_devices, "devices"),
        escalate=None if raw_escalate is None else _parse_escalation(raw_escalate, "escalate"),
        syscalls=SyscallPolicy() if raw_syscalls is None else parse_syscall_policy(raw_syscalls, "syscalls"),
    )


def policy_to_document(policy: Policy) -> dict[str, Any]:
    """The inverse of :func:`parse_policy`: ``parse_policy(policy_to_document(p)) == p``."""
    target_value: Any = policy.target.value
    if policy.target.kind is TargetKind.PID:
        target_value = int(target_value)
    doc: dict[str, Any] = {
        "sandbox": policy.sandbox,
        "target": {policy.target.kind.value: target_value},
        "labels": dict(policy.labels),
        "mode": policy.mode.value,
        "network": {
            "default": policy.network.default.value,
            "allow": [_rule_to_document(r) for r in policy.network.allow]
            + [_name_rule_to_document(r) for r in policy.network.allow_names],
            "deny": [_rule_to_document(r) for r in policy.network.deny]
            + [{"to": r.name} for r in policy.network.deny_names],
        },
        "devices": {"gpu": policy.devices.gpu.value},
    }
    dns = policy.network.dns
    if dns is not None:
        doc["network"]["dns"] = {"upstream": [str(u) for u in dns.upstream], "grace": f"{dns.grace:g}s"}
    if policy.escalate is not None:
        doc["escalate"] = {"after": policy.escalate.after, "within": f"{policy.escalate.within:g}s",
                           "action": policy.escalate.action.value}
    if policy.syscalls != SyscallPolicy():
        doc["syscalls"] = {"default": policy.syscalls.default.value, "allow": list(policy.syscalls.allow),
                           "deny": list(policy.syscalls.deny)}
    if policy.exec is not None:
        doc["exec"] = {
            "default": policy.exec.default.value,
            "allow": list(policy.exec.allow),
            "deny": list(policy.exec.deny),
        }
    return doc


def dumps_policy(policy: Policy) -> str:
    return json.dumps(policy_to_document(policy), indent=2)


def _rule_to_document(rule: NetworkRule) -> dict[str, Any]:
    doc: dict[str, Any] = {"to": _network_text(rule.to), "protocol": rule.protocol.value}
    if rule.ports:
        doc["ports"] = [p.first if p.first == p.last else str(p) for p in rule.ports]
    return doc


def _name_rule_to_document(rule: NameRule) -> dict[str, Any]:
    doc: dict[str, Any] = {"to": rule.name, "protocol": rule.protocol.value}
    if rule.ports:
        doc["ports"] = [p.first if p.first == p.last else str(p) for p in rule.ports]
    return doc


def _network_text(net: IPNetwork) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _require_mapping(value: Any, path: str, what: str) -> None:
    if type(value) is not dict and not isinstance(value, Mapping):  # exact type first: ABC checks are slow
        raise PolicyError(path, f"must be {what} (a mapping), got {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise PolicyError(path, f"keys must be strings, got {key!r}")


PID_MAX_LIMIT = 4_194_304  # the kernel's ceiling for pid_max (include/linux/threads.h)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][\w./-]*\Z")


def _key_path(path: str, key: str) -> str:
    """``path.key``, or ``path['odd key']`` when the key would make the path ambiguous."""
    if not _PLAIN_KEY.match(key) or (not path and not key.isidentifier()):
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


def _refuse_unknown(doc: Mapping[str, Any], known: Sequence[str], path: str) -> None:
    for key in doc:
        if key not in known:
            raise PolicyError(_key_path(path, key), f"unknown field (expected one of: {', '.join(known)})")


def _type_name(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _parse_sandbox_id(value: Any, path: str) -> str:
    if value is None:
        raise PolicyError(path, "is required")
    if not isinstance(value, str) or not SANDBOX_ID.match(value):
        raise PolicyError(
            path,
            f"{value!r} is not a valid sandbox id (1-128 characters: letters, digits, "
            "'.', '_', ':', '-', starting with a letter or digit)",
        )
    return value


def _parse_target(value: Any, path: str) -> Target:
    if value is None:
        raise PolicyError(path, "is required (one of: cgroup, pid, container)")
    _require_mapping(value, path, "a target")
    _refuse_unknown(value, _TARGET_FIELDS, path)
    create = value.get("create", False)
    if not isinstance(create, bool):
        raise PolicyError(f"{path}.create", f"must be true or false, got {create!r}")
    root = value.get("root", "")
    if not isinstance(root, str) or (root and (not root.startswith("/") or "\0" in root)):
        raise PolicyError(f"{path}.root", f"must be an absolute directory path, got {root!r}")
    given = [k for k in TargetKind if k.value in value]
    if len(given) != 1:
        raise PolicyError(
            path,
            "needs exactly one of cgroup, pid, container"
            + (f" (got {', '.join(k.value for k in given)})" if given else ""),
        )
    kind = given[0]
    raw = value[kind.value]
    where = f"{path}.{kind.value}"
    for flag, given_value in (("create", create), ("root", root)):
        if given_value and kind is not TargetKind.CGROUP:
            raise PolicyError(f"{path}.{flag}", f"applies to a cgroup target only (this one is a {kind.value})")
    if kind is TargetKind.PID:
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw <= PID_MAX_LIMIT:
            raise PolicyError(where, f"must be a process id (1-{PID_MAX_LIMIT}), got {raw!r}")
        return Target(kind, str(raw))
    if not isinstance(raw, str) or not raw.strip():
        raise PolicyError(where, f"must be a non-empty string, got {raw!r}")
    if kind is TargetKind.CONTAINER and not CONTAINER_ID.match(raw):
        raise PolicyError(where, f"{raw!r} is not a container id (12 to 64 lowercase hex digits)")
    if kind is TargetKind.CGROUP and "\0" in raw:
        raise PolicyError(where, "must not contain NUL")
    if create and ".." in Path(raw).parts:
        raise PolicyError(where, "must not contain '..' when the daemon is to create it")
    return Target(kind, raw, create=create, root=root)


def parse_labels(value: Any, path: str = "labels") -> tuple[tuple[str, str], ...]:
    """Labels as the model keeps them (sorted pairs); PolicyError names the label."""
    if value is None:
        return ()
    _require_mapping(value, path, "labels")
    if len(value) > MAX_LABELS:
        raise PolicyError(path, f"at most {MAX_LABELS} labels, got {len(value)}")
    labels = []
    for key, raw in value.items():
        where = _key_path(path, key)
        if not LABEL_KEY.match(key):
            raise PolicyError(where, "label names are 1-63 characters: letters, digits, '.', '_', '/', '-'")
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise PolicyError(where, f"label values are strings, got {_type_name(raw)}")
        text = str(raw)
        if len(text) > MAX_LABEL_VALUE:
            raise PolicyError(where, f"label values are at most {MAX_LABEL_VALUE} characters")
        labels.append((key, text))
    return tuple(sorted(labels))


_ENUM_MEMBERS: dict[Any, dict[str, Any]] = {
    enum_type: {m.value: m for m in enum_type} for enum_type in (Mode, Verdict, Protocol, EscalationAction)
}


def _parse_enum(value: Any, enum_type: Any, path: str) -> Any:
    members = _ENUM_MEMBERS[enum_type]
    if isinstance(value, str):
        member = members.get(value.lower())
        if member is not None:
            return member
    raise PolicyError(path, f"must be one of {', '.join(members)}, got {value!r}")


def _parse_network(value: Any, path: str) -> NetworkPolicy:
    _require_mapping(value, path, "a network policy")
    _refuse_unknown(value, _NETWORK_FIELDS, path)
    allow, allow_names = _parse_rules(value.get("allow"), f"{path}.allow", deny=False)
    deny, deny_names = _parse_rules(value.get("deny"), f"{path}.deny", deny=True)
    count = len(allow) + len(deny) + len(allow_names) + len(deny_names)
    if count > MAX_RULES:
        raise PolicyError(path, f"at most {MAX_RULES} rules in all, got {count}")
    raw_dns = value.get("dns")
    dns = None
    if raw_dns is not None:
        dns = _parse_dns(raw_dns, f"{path}.dns")
    elif allow_names or deny_names:
        dns = DnsPolicy(grace=DEFAULT_DNS_GRACE)
    return NetworkPolicy(
        default=_parse_enum(value.get("default", "deny"), Verdict, f"{path}.default"),
        allow=tuple(allow),
        deny=tuple(deny),
        allow_names=tuple(allow_names),
        deny_names=tuple(deny_names),
        dns=dns,
    )


def _parse_rules(value: Any, path: str, deny: bool) -> tuple[list[NetworkRule], list[NameRule]]:
    """Address rules and name rules, each in the order given."""
    if value is None:
        return [], []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise PolicyError(path, f"must be a list of rules, got {_type_name(value)}")
    addresses: list[NetworkRule] = []
    names: list[NameRule] = []
    for i, item in enumerate(value):
        rule = _parse_rule(item, i, f"{path}[{i}]", deny)
        if isinstance(rule, NameRule):
            names.append(rule)
        else:
            addresses.append(rule)
    return addresses, names


def _parse_rule(value: Any, index: int, path: str, deny: bool) -> NetworkRule | NameRule:
    _require_mapping(value, path, "a rule")
    _refuse_unknown(value, _RULE_FIELDS, path)
    to = value.get("to")
    network = _try_network(to)  # addresses first: most rules are, and their parse is cached
    name = _host_name(to) if network is None else None
    if name is not None and deny and ("ports" in value or "protocol" in value):
        field = "ports" if "ports" in value else "protocol"
        raise PolicyError(f"{path}.{field}", "a name in deny refuses every query for it: ports and protocol "
                                             "do not apply (deny an address to refuse some ports)")
    ports: tuple[PortRange, ...] = ()
    if "ports" in value and value["ports"] is not None:
        ports = _parse_ports(value["ports"], f"{path}.ports")
    protocol = _parse_enum(value.get("protocol", "any"), Protocol, f"{path}.protocol")
    if name is not None:
        if len(name) > MAX_HOST_NAME:
            raise PolicyError(f"{path}.to", f"host names are at most {MAX_HOST_NAME} characters")
        return NameRule(name=name, ports=ports, protocol=protocol)
    if network is None:
        network = _parse_address(to, f"{path}.to")  # raises, naming what is wrong
    return NetworkRule(to=network, ports=ports, protocol=protocol, index=index)


def _try_network(value: Any) -> IPNetwork | None:
    if not isinstance(value, str):
        return None
    try:
        return _network(value.strip())
    except ValueError:
        return None


def _host_name(value: Any) -> str | None:
    """The normalized name if ``value`` is a host name (not an address or CIDR)."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower().removesuffix(".")
    if not text.isascii():  # an internationalized name: DNS carries its ASCII (punycode) form
        prefix = "*." if text.startswith("*.") else ""
        try:
            text = prefix + text[len(prefix):].encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if not HOST_NAME.fullmatch(text):
        return None
    labels = text.split(".")
    if all(label.isdigit() for label in labels):
        return None  # 10.0.0.300 is a bad address, not a name
    return text


def _parse_address(value: Any, path: str) -> IPNetwork:
    if value is None:
        raise PolicyError(path, "is required (an address, CIDR or host name)")
    if not isinstance(value, str):
        raise PolicyError(path, f"must be an address, CIDR or host name string, got {_type_name(value)}")
    try:
        return _network(value.strip())
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise PolicyError(path, f"{value!r} is not an IPv4 or IPv6 address, CIDR or host name "
                                    "(names: letters, digits, '-', '_', dot-separated; '*.' in front for "
                                    "every name below)") from exc
        raise PolicyError(path, f"{value!r} has host bits set (did you mean {loose}?)") from exc


def _parse_dns(value: Any, path: str) -> DnsPolicy:
    _require_mapping(value, path, "a dns section")
    _refuse_unknown(value, _DNS_FIELDS, path)
    raw = value.get("upstream")
    upstream: tuple[Upstream, ...] = ()
    if raw is not None:
        if isinstance(raw, str):
            raw = [raw]
        if isinstance(raw, bytes) or not isinstance(raw, Sequence):
            raise PolicyError(f"{path}.upstream", f"must be a list of resolver addresses, got {_type_name(raw)}")
        if len(raw) > MAX_UPSTREAMS:
            raise PolicyError(f"{path}.upstream", f"at most {MAX_UPSTREAMS} resolvers, got {len(raw)}")
        upstream = tuple(_parse_upstream(item, f"{path}.upstream[{i}]") for i, item in enumerate(raw))
    grace = DEFAULT_DNS_GRACE
    if value.get("grace") is not None:
        grace = _parse_seconds(value["grace"], f"{path}.grace")
        if not 0 <= grace <= MAX_DNS_GRACE:
            raise PolicyError(f"{path}.grace", f"must be from 0 to {MAX_DNS_GRACE:g}s, got {value['grace']!r}")
    return DnsPolicy(upstream=upstream, grace=grace)


_UPSTREAM_WITH_PORT = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<port6>\d+)|(?P<v4>[0-9.]+):(?P<port4>\d+)")


def _parse_upstream(value: Any, path: str) -> Upstream:
    if not isinstance(value, str):
        raise PolicyError(path, f"must be a resolver address like 10.0.0.2, 10.0.0.2:5353 or [fd00::2]:53, "
                                f"got {_type_name(value)}")
    text = value.strip()
    port = 53
    match = _UPSTREAM_WITH_PORT.fullmatch(text)
    if match:
        text = match.group("v6") or match.group("v4")
        port = int(match.group("port6") or match.group("port4"))
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise PolicyError(path, f"{value!r} is not a resolver address (an IP address, with :port or [v6]:port "
                                "for another port than 53)") from None
    if not 1 <= port <= 65535:
        raise PolicyError(path, f"port {port} is out of range (1-65535)")
    return Upstream(address=address, port=port)


@functools.lru_cache(maxsize=1 << 16)
def _network(text: str) -> IPNetwork:
    """Parsing addresses dominates the cost of a large policy, and orchestrators
    re-apply the same rules across thousands of rollouts; networks are immutable."""
    return ipaddress.ip_network(text, strict=True)


def _parse_ports(value: Any, path: str) -> tuple[PortRange, ...]:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if type(value) is not list and (not isinstance(value, Sequence) or isinstance(value, bytes)):
        raise PolicyError(path, f"must be a list of ports or ranges, got {_type_name(value)}")
    if not value:
        raise PolicyError(path, "must not be empty (leave ports out to allow every port)")
    if len(value) > MAX_PORT_RANGES:
        raise PolicyError(path, f"at most {MAX_PORT_RANGES} entries, got {len(value)}")
    return tuple(_parse_port_range(item, f"{path}[{i}]") for i, item in enumerate(value))


def _parse_port_range(value: Any, path: str) -> PortRange:
    if type(value) is int:
        port = _check_port(value, path)
        return PortRange(port, port)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+", text):
            port = _check_port(int(text), path)
            return PortRange(port, port)
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
        if match:
            first = _check_port(int(match.group(1)), path)
            last = _check_port(int(match.group(2)), path)
            if first > last:
                raise PolicyError(path, f"empty range {value!r}: {first} is after {last}")
            return PortRange(first, last)
    raise PolicyError(path, f"must be a port (1-65535) or a range like \"8000-8100\", got {value!r}")


def _check_port(port: int, path: str) -> int:
    if not 1 <= port <= 65535:
        raise PolicyError(path, f"port {port} is out of range (1-65535)")
    return port


def _parse_exec(value: Any, path: str) -> ExecPolicy:
    _require_mapping(value, path, "an exec policy")
    _refuse_unknown(value, _EXEC_FIELDS, path)
    allow = _parse_exec_entries(value.get("allow"), f"{path}.allow")
    deny = _parse_exec_entries(value.get("deny"), f"{path}.deny")
    return ExecPolicy(
        default=_parse_enum(value.get("default", "deny"), Verdict, f"{path}.default"),
        allow=allow,
        deny=deny,
    )


def _parse_exec_entries(value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise PolicyError(path, f"must be a list of absolute paths, got {_type_name(value)}")
    if len(value) > MAX_EXEC_ENTRIES:
        raise PolicyError(path, f"at most {MAX_EXEC_ENTRIES} entries, got {len(value)}")
    return tuple(_parse_exec_path(item, f"{path}[{i}]") for i, item in enumerate(value))


def _parse_exec_path(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(path, f"must be an absolute path, got {_type_name(value)}")
    if not value.startswith("/"):
        raise PolicyError(path, f"{value!r} is not an absolute path")
    if "\0" in value:
        raise PolicyError(path, "must not contain NUL")
    if len(value.encode()) > MAX_EXEC_PATH:
        raise PolicyError(path, f"is longer than {MAX_EXEC_PATH} bytes")
    body = value[1:-1] if value.endswith("/") else value[1:]
    if value != "/" and any(part in ("", ".", "..") for part in body.split("/")):
        raise PolicyError(path, f"{value!r} must be a plain path: no '.', '..' or empty components")
    return value


def _parse_devices(value: Any, path: str) -> DevicePolicy:
    _require_mapping(value, path, "a device policy")
    _refuse_unknown(value, _DEVICE_FIELDS, path)
    return DevicePolicy(gpu=_parse_enum(value.get("gpu", "deny"), Verdict, f"{path}.gpu"))


def _parse_escalation(value: Any, path: str) -> Escalation:
    _require_mapping(value, path, "an escalation")
    _refuse_unknown(value, _ESCALATE_FIELDS, path)
    after = value.get("after")
    if isinstance(after, bool) or not isinstance(after, int) or not 1 <= after <= MAX_ESCALATE_AFTER:
        raise PolicyError(f"{path}.after", f"must be a whole number of denials from 1 to {MAX_ESCALATE_AFTER}, "
                                           f"got {after!r}")
    if "action" not in value:
        raise PolicyError(f"{path}.action", "is required (one of quarantine, freeze, kill)")
    return Escalation(
        after=after,
        within=_parse_duration(value.get("within"), f"{path}.within"),
        action=_parse_enum(value["action"], EscalationAction, f"{path}.action"),
    )


def _parse_seconds(value: Any, path: str) -> float:
    """Seconds, as a number or a string with a unit: 500ms, 10s, 2m, 1h."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", value)
        if match:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds is None or seconds != seconds:
        raise PolicyError(path, f"must be a duration such as 10s, 500ms, 2m (or seconds as a number), got {value!r}")
    return seconds


def _parse_duration(value: Any, path: str) -> float:
    seconds = _parse_seconds(value, path)
    if not 0 < seconds <= MAX_ESCALATE_WITHIN:
        raise PolicyError(path, f"must be more than 0 and at most {MAX_ESCALATE_WITHIN:g}s, got {value!r}")
    return seconds
