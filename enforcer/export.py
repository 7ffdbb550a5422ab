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
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from enforcer import __version__
from enforcer import kinds as denial_kinds
from enforcer.v1 import enforcer_pb2 as pb

OCSF_VERSION = "1.3.0"
OCSF_PROFILES = ["security_control"]
FORMATS = ("jsonl", "ocsf", "csv")

# Short kind names (what --kind takes) -> how the audit log spells them.
DENIAL_KINDS = {kind.name: pb.DenialKind.Name(kind.proto) for kind in denial_kinds.KINDS}
_SHORT_KINDS = {spelled: short for short, spelled in DENIAL_KINDS.items()}
POLICY_EVENTS = ("policy_applied", "policy_removed", "labels_updated", "sandbox_released")
KINDS = (*DENIAL_KINDS, "policy")

CSV_COLUMNS = ("seq", "timestamp", "event", "sandbox", "kind", "action", "pid", "comm",
               *dict.fromkeys(column for kind in denial_kinds.KINDS for column in kind.csv_columns),
               "labels", "policy_sha256", "client", "generation")

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
        "message": denial_kinds.BY_NAME[kind].message(record, "refused" if refused else "audited"),
        "unmapped": {"sandbox": record.get("sandbox", ""), "kind": kind,
                     **{k: record[k] for k in ("reason", "script", "escalation", "after", "within_seconds", "acted",
                                               "family", "type") if k in record}},
    }
    actor_process = {"pid": int(record.get("pid", 0)), "name": str(record.get("comm", ""))}
    rendered = denial_kinds.BY_NAME[kind].ocsf(record, refused, actor_process, host)
    event.update(rendered.fields)
    event["unmapped"].update(rendered.unmapped)
    return event
