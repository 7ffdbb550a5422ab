"""`enforcer export`: the audit log (the current file, its rotated files and
gzip-compressed ones) filtered and written as JSON lines, OCSF or CSV.

Reads files only; the daemon need not run. OCSF output follows schema 1.3.0
with the security_control profile: network denials are Network Activity (4001),
exec, device, syscall, escape and escalation records are Process Activity (1007), each with
disposition Blocked (refused) or Allowed (audit mode). Policy changes have no
OCSF class among those two and are left out of OCSF output (and counted).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from enforcer import __version__

OCSF_VERSION = "1.3.0"
OCSF_PROFILES = ["security_control"]
FORMATS = ("jsonl", "ocsf", "csv")

# Short kind names (what --kind takes) -> how the audit log spells them.
DENIAL_KINDS = {
    "connect": "DENIAL_KIND_CONNECT",
    "sendmsg": "DENIAL_KIND_SENDMSG",
    "socket": "DENIAL_KIND_SOCKET",
    "exec": "DENIAL_KIND_EXEC",
    "device": "DENIAL_KIND_DEVICE",
    "escalation": "DENIAL_KIND_ESCALATION",
    "dns": "DENIAL_KIND_DNS",
    "syscall": "DENIAL_KIND_SYSCALL",
    "escape": "DENIAL_KIND_ESCAPE",
}
_SHORT_KINDS = {spelled: short for short, spelled in DENIAL_KINDS.items()}
POLICY_EVENTS = ("policy_applied", "policy_removed", "labels_updated", "sandbox_released")
KINDS = (*DENIAL_KINDS, "policy")

CSV_COLUMNS = ("seq", "timestamp", "event", "sandbox", "kind", "action", "pid", "comm", "address", "port",
               "path", "argv", "reason", "major", "minor", "access", "driver", "device", "escalation", "name",
               "query_type", "syscall", "number", "args", "moved_pid", "cgroup", "how", "moved_killed_by",
               "labels",
               "policy_sha256", "client", "generation")

_ROTATED = re.compile(r"\.(\d+)(\.gz)?$")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class ExportError(ValueError):
    pass


def parse_time(value: str, name: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise), or a duration before
    now: 90s, 15m, 2h, 7d."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(value.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(f"{name}: {value!r} is neither an ISO 8601 time nor a duration like 15m, 2h, 7d") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def log_files(path: Path) -> list[Path]:
    """The audit log's files, oldest first: path.N[.gz] ... path.1[.gz], path."""
    rotated = []
    for candidate in path.parent.glob(path.name + ".*"):
        match = _ROTATED.search(candidate.name[len(path.name):])
        if match and candidate.name == f"{path.name}.{match.group(1)}{match.group(2) or ''}":
            rotated.append((int(match.group(1)), candidate))
    files = [p for _, p in sorted(rotated, key=lambda item: -item[0])]
    if path.exists():
        files.append(path)
    if not files:
        raise ExportError(f"no audit log at {path} (nor rotated files beside it)")
    return files


def read_records(files: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Every record, in file order. A line that is not a JSON object (a torn
    last line after a crash, say) is an error naming file and line: an audit
    export never skips a record silently."""
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as stream:
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ExportError(f"{path}:{number}: not a JSON record ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise ExportError(f"{path}:{number}: not a JSON object")
                yield record


@dataclass
class RecordFilter:
    since: datetime | None = None
    until: datetime | None = None
    sandboxes: set[str] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)  # short names, from KINDS

    def __post_init__(self) -> None:
        unknown = sorted(self.kinds - set(KINDS))
        if unknown:
            raise ExportError(f"--kind: unknown {', '.join(unknown)} (one of {', '.join(KINDS)})")
        if self.since and self.until and self.since > self.until:
            raise ExportError("--since is after --until")

    def matches(self, record: dict[str, Any]) -> bool:
        if self.sandboxes and record.get("sandbox") not in self.sandboxes:
            return False
        if self.kinds and kind_of(record) not in self.kinds:
            return False
        if self.since or self.until:
            when = record_time(record)
            if when is None or (self.since and when < self.since) or (self.until and when > self.until):
                return False
        return True


def kind_of(record: dict[str, Any]) -> str:
    event = record.get("event")
    if event == "denial":
        return _SHORT_KINDS.get(record.get("kind", ""), "")
    return "policy" if event in POLICY_EVENTS else ""


def record_time(record: dict[str, Any]) -> datetime | None:
    """When it happened: the kernel's time for a denial, else when it was logged."""
    if isinstance(record.get("time_unix_ns"), int):
        return datetime.fromtimestamp(record["time_unix_ns"] / 1e9, UTC)
    stamp = record.get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class ExportSummary:
    written: int = 0
    not_mappable: int = 0  # records the format has no class for (policy changes in OCSF)


def export(records: Iterable[dict[str, Any]], selection: RecordFilter, fmt: str, out: IO[str]) -> ExportSummary:
    if fmt not in FORMATS:
        raise ExportError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    summary = ExportSummary()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n") if fmt == "csv" else None
    if writer:
        writer.writeheader()
    host = socket.gethostname()
    for record in records:
        if not selection.matches(record):
            continue
        if writer:
            writer.writerow(csv_row(record))
        elif fmt == "jsonl":
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
        else:
            mapped = to_ocsf(record, host)
            if mapped is None:
                summary.not_mappable += 1
                continue
            out.write(json.dumps(mapped, separators=(",", ":")) + "\n")
        summary.written += 1
    return summary


def csv_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {column: record.get(column, "") for column in CSV_COLUMNS}
    row["kind"] = kind_of(record)
    if isinstance(record.get("argv"), list):
        row["argv"] = " ".join(record["argv"])
    if isinstance(record.get("args"), list):
        row["args"] = " ".join(hex(a) if isinstance(a, int) else str(a) for a in record["args"])
    if isinstance(record.get("labels"), dict):
        row["labels"] = ";".join(f"{k}={v}" for k, v in sorted(record["labels"].items()))
    return row


# ---- OCSF ----------------------------------------------------------------------

_NET_ACTIVITY = {"connect": (1, "Open"), "sendmsg": (6, "Traffic"), "socket": (99, "Other")}
_PROTOCOL_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp"}


def to_ocsf(record: dict[str, Any], host: str) -> dict[str, Any] | None:
    kind = kind_of(record)
    if kind not in DENIAL_KINDS:
        return None
    refused = record.get("action") == "ACTION_REFUSED"
    when = record_time(record)
    event: dict[str, Any] = {
        "time": int(when.timestamp() * 1000) if when else 0,
        "severity_id": 3 if refused else 1,
        "severity": "Medium" if refused else "Informational",
        "action_id": 2 if refused else 1,
        "action": "Denied" if refused else "Allowed",
        "disposition_id": 2 if refused else 1,
        "disposition": "Blocked" if refused else "Allowed",
        "metadata": {
            "product": {"name": "Enforcer", "vendor_name": "Enforcer", "version": __version__},
            "version": OCSF_VERSION,
            "profiles": OCSF_PROFILES,
            "uid": str(record.get("seq", "")),
            "labels": [f"{k}={v}" for k, v in sorted((record.get("labels") or {}).items())],
        },
        "message": _message(kind, record, refused),
        "unmapped": {"sandbox": record.get("sandbox", ""), "kind": kind,
                     **{k: record[k] for k in ("reason", "script", "escalation", "after", "within_seconds", "acted",
                                               "family", "type") if k in record}},
    }
    actor_process = {"pid": int(record.get("pid", 0)), "name": str(record.get("comm", ""))}
    if kind in _NET_ACTIVITY:
        # Network Activity 1.3.0 has no actor: the process goes in unmapped.
        event["unmapped"].update(pid=actor_process["pid"], comm=actor_process["name"])
        activity_id, activity = _NET_ACTIVITY[kind]
        event.update(category_uid=4, category_name="Network Activity", class_uid=4001,
                     class_name="Network Activity", activity_id=activity_id, activity_name=activity,
                     type_uid=400100 + activity_id, type_name=f"Network Activity: {activity}",
                     dst_endpoint={"ip": record["address"], "port": int(record.get("port", 0))}
                     if record.get("address") else {"hostname": host},
                     connection_info={"direction_id": 2, "direction": "Outbound",
                                      **_protocol(record.get("protocol"))})
        return event
    if kind == "dns":
        # DNS Activity: a Query (1); a refused one was answered REFUSED (rcode 5).
        event["unmapped"].update(pid=actor_process["pid"], comm=actor_process["name"])
        event.update(category_uid=4, category_name="Network Activity", class_uid=4003, class_name="DNS Activity",
                     activity_id=1, activity_name="Query", type_uid=400301, type_name="DNS Activity: Query",
                     query={"hostname": str(record.get("name", "")), "type": str(record.get("query_type", "")),
                            "class": "IN"},
                     connection_info={"direction_id": 2, "direction": "Outbound", **_protocol(record.get("protocol"))})
        if refused:
            event.update(rcode_id=5, rcode="Refused")
        return event
    if kind == "exec":
        activity_id, activity = 1, "Launch"
        argv = record.get("argv") or []
        process = {"pid": int(record.get("pid", 0)), "name": os.path.basename(str(record.get("path", ""))),
                   "cmd_line": " ".join(argv),
                   "file": {"name": os.path.basename(str(record.get("path", ""))),
                            "path": str(record.get("path", "")), "type_id": 1, "type": "Regular File"}}
        actor_process = {**actor_process, **({"pid": int(record["ppid"])} if record.get("ppid") else {})}
    elif kind == "escape":
        # The process that left its sandbox's cgroup; the actor made the move.
        activity_id, activity = 99, "Other"
        process = {"pid": int(record.get("moved_pid", 0)), "name": ""}
        event["unmapped"].update(cgroup=record.get("cgroup", ""), how=record.get("how", ""),
                                 moved_killed_by=record.get("moved_killed_by", ""))
    elif kind == "syscall":
        # The refused call, as Process Activity: Other (the caller is killed at the call, or it got EPERM).
        activity_id, activity, process = 99, "Other", actor_process
        event["unmapped"].update(syscall=record.get("syscall", ""), number=record.get("number"),
                                 args=record.get("args") or [], refused_by_lsm=bool(record.get("refused_by_lsm")),
                                 compat=bool(record.get("compat")))
    elif kind == "escalation" and record.get("escalation") == "ESCALATION_ACTION_KILL":
        activity_id, activity, process = 2, "Terminate", actor_process
    else:  # a device open, a quarantine or freeze
        activity_id, activity, process = 99, "Other", actor_process
    event.update(category_uid=1, category_name="System Activity", class_uid=1007, class_name="Process Activity",
                 activity_id=activity_id, activity_name=activity, type_uid=100700 + activity_id,
                 type_name=f"Process Activity: {activity}", actor={"process": actor_process}, process=process,
                 device={"hostname": host, "type_id": 0, "type": "Unknown"})
    return event


def _protocol(number: object) -> dict[str, Any]:
    if not isinstance(number, int) or number <= 0:
        return {}
    return {"protocol_num": number, **({"protocol_name": _PROTOCOL_NAMES[number]} if number in _PROTOCOL_NAMES else {})}


def _message(kind: str, record: dict[str, Any], refused: bool) -> str:
    verb = "refused" if refused else "audited"
    sandbox = record.get("sandbox", "")
    if kind in ("connect", "sendmsg"):
        return f"{kind} to {record.get('address')}:{record.get('port')} {verb} in sandbox {sandbox}"
    if kind == "exec":
        return f"exec of {record.get('path')} {verb} in sandbox {sandbox}"
    if kind == "device":
        named = " ".join(str(part) for part in (record.get("device"), record.get("driver")) if part)
        return (f"device {named + ' ' if named else ''}{record.get('major')}:{record.get('minor')} "
                f"({record.get('access')}) {verb} in sandbox {sandbox}")
    if kind == "escape" and record.get("how") == "signal_to_daemon":
        return f"signal {record.get('signal')} to the enforcer daemon {verb} in sandbox {sandbox}"
    if kind == "escape":
        return (f"process {record.get('moved_pid')} left sandbox {sandbox} for cgroup "
                f"{record.get('cgroup') or '?'} ({record.get('how')}), {verb}")
    if kind == "syscall":
        return f"syscall {record.get('syscall') or record.get('number')} {verb} in sandbox {sandbox}"
    if kind == "dns":
        return f"DNS query for {record.get('name')} ({record.get('query_type')}) {verb} in sandbox {sandbox}"
    if kind == "escalation":
        return f"escalation {record.get('escalation')} after {record.get('after')} denials in sandbox {sandbox}"
    return f"socket creation {verb} in sandbox {sandbox}"


