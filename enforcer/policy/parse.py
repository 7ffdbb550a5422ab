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
    Escalation,
    EscalationAction,
    ExecPolicy,
    IPNetwork,
    Mode,
    NetworkPolicy,
    NetworkRule,
    Policy,
    PortRange,
    Protocol,
    Target,
    TargetKind,
    Verdict,
)

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

_TOP_FIELDS = ("sandbox", "target", "labels", "mode", "network", "exec", "devices", "escalate")
_ESCALATE_FIELDS = ("after", "within", "action")
_NETWORK_FIELDS = ("default", "allow", "deny")
_EXEC_FIELDS = ("default", "allow", "deny")
_DEVICE_FIELDS = ("gpu",)
_RULE_FIELDS = ("to", "ports", "protocol")


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
    return Policy(
        sandbox=_parse_sandbox_id(doc.get("sandbox"), "sandbox"),
        target=_parse_target(doc.get("target"), "target"),
        labels=parse_labels(doc.get("labels"), "labels"),
        mode=_parse_enum(doc.get("mode", "enforce"), Mode, "mode"),
        network=network,
        exec=None if raw_exec is None else _parse_exec(raw_exec, "exec"),
        devices=DevicePolicy() if raw_devices is None else _parse_devices(raw_devices, "devices"),
        escalate=None if raw_escalate is None else _parse_escalation(raw_escalate, "escalate"),
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
            "allow": [_rule_to_document(r) for r in policy.network.allow],
            "deny": [_rule_to_document(r) for r in policy.network.deny],
        },
        "devices": {"gpu": policy.devices.gpu.value},
    }
    if policy.escalate is not None:
        doc["escalate"] = {"after": policy.escalate.after, "within": f"{policy.escalate.within:g}s",
                           "action": policy.escalate.action.value}
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
    if not _PLAIN_KEY.match(key):
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
    _refuse_unknown(value, [k.value for k in TargetKind], path)
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
    return Target(kind, raw)


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
    allow = _parse_rules(value.get("allow"), f"{path}.allow")
    deny = _parse_rules(value.get("deny"), f"{path}.deny")
    if len(allow) + len(deny) > MAX_RULES:
        raise PolicyError(path, f"at most {MAX_RULES} rules in all, got {len(allow) + len(deny)}")
    return NetworkPolicy(
        default=_parse_enum(value.get("default", "deny"), Verdict, f"{path}.default"),
        allow=allow,
        deny=deny,
    )


def _parse_rules(value: Any, path: str) -> tuple[NetworkRule, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise PolicyError(path, f"must be a list of rules, got {_type_name(value)}")
    return tuple(_parse_rule(item, f"{path}[{i}]") for i, item in enumerate(value))


def _parse_rule(value: Any, path: str) -> NetworkRule:
    _require_mapping(value, path, "a rule")
    _refuse_unknown(value, _RULE_FIELDS, path)
    ports: tuple[PortRange, ...] = ()
    if "ports" in value and value["ports"] is not None:
        ports = _parse_ports(value["ports"], f"{path}.ports")
    return NetworkRule(
        to=_parse_address(value.get("to"), f"{path}.to"),
        ports=ports,
        protocol=_parse_enum(value.get("protocol", "any"), Protocol, f"{path}.protocol"),
    )


def _parse_address(value: Any, path: str) -> IPNetwork:
    if value is None:
        raise PolicyError(path, "is required (an address or CIDR)")
    if not isinstance(value, str):
        raise PolicyError(path, f"must be an address or CIDR string, got {_type_name(value)}")
    try:
        return _network(value.strip())
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise PolicyError(path, f"{value!r} is not an IPv4 or IPv6 address or CIDR") from exc
        raise PolicyError(path, f"{value!r} has host bits set (did you mean {loose}?)") from exc


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


def _parse_duration(value: Any, path: str) -> float:
    """Seconds, as a number or a string with a unit: 500ms, 10s, 2m, 1h."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", value)
        if match:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds is None:
        raise PolicyError(path, f"must be a duration such as 10s, 500ms, 2m (or seconds as a number), got {value!r}")
    if not 0 < seconds <= MAX_ESCALATE_WITHIN:
        raise PolicyError(path, f"must be more than 0 and at most {MAX_ESCALATE_WITHIN:g}s, got {value!r}")
    return seconds
