"""enforcer export: reading rotated and gzip-compressed audit logs, filtering,
and OCSF output validated against the OCSF 1.3.0 schema (ocsf-json-schema
embeds the schema's JSON and builds each class's JSON Schema offline)."""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from enforcer import export
from enforcer.cli import main

T0 = 1_764_500_000_000_000_000  # ns

RECORDS: list[dict[str, Any]] = [
    {"sandbox": "sb-1", "replaced": False, "generation": 1, "policy_sha256": "ab" * 32, "client": "unix:",
     "event": "policy_applied", "level": "info", "timestamp": "2025-11-30T10:53:19.000000Z"},
    {"seq": 1, "sandbox": "sb-1", "labels": {"run": "ppo"}, "kind": "DENIAL_KIND_CONNECT",
     "action": "ACTION_REFUSED", "pid": 10, "comm": "ssh", "address": "10.0.0.1", "port": 22, "protocol": 6,
     "time_unix_ns": T0 + 1_000_000_000, "event": "denial", "level": "info", "timestamp": "2025-11-30T10:53:21Z"},
    {"seq": 2, "sandbox": "sb-1", "labels": {"run": "ppo"}, "kind": "DENIAL_KIND_SENDMSG",
     "action": "ACTION_AUDITED", "pid": 10, "comm": "dig", "address": "fd00::1", "port": 53, "protocol": 17,
     "time_unix_ns": T0 + 2_000_000_000, "event": "denial", "level": "info", "timestamp": "2025-11-30T10:53:22Z"},
    {"seq": 3, "sandbox": "sb-2", "labels": {}, "kind": "DENIAL_KIND_SOCKET", "action": "ACTION_REFUSED",
     "pid": 11, "comm": "ping", "time_unix_ns": T0 + 3_000_000_000, "family": 2, "type": 3, "protocol": 1,
     "event": "denial", "level": "info", "timestamp": "2025-11-30T10:53:23Z"},
    {"seq": 4, "sandbox": "sb-2", "labels": {}, "kind": "DENIAL_KIND_EXEC", "action": "ACTION_REFUSED",
     "pid": 12, "comm": "bash", "time_unix_ns": T0 + 4_000_000_000, "ppid": 9, "path": "/tmp/xmrig",
     "argv": ["xmrig", "-o", "pool:3333"], "reason": "EXEC_REASON_NOT_ALLOWED", "script": False,
     "event": "denial", "level": "info", "timestamp": "2025-11-30T10:53:24Z"},
    {"seq": 5, "sandbox": "sb-2", "labels": {}, "kind": "DENIAL_KIND_DEVICE", "action": "ACTION_REFUSED",
     "pid": 12, "comm": "python", "time_unix_ns": T0 + 5_000_000_000, "major": 195, "minor": 0, "access": "rw",
     "event": "denial", "level": "info", "timestamp": "2025-11-30T10:53:25Z"},
    {"seq": 6, "sandbox": "sb-2", "labels": {}, "kind": "DENIAL_KIND_ESCALATION", "action": "ACTION_REFUSED",
     "pid": 0, "comm": "", "time_unix_ns": T0 + 6_000_000_000, "escalation": "ESCALATION_ACTION_KILL",
     "after": 3, "within_seconds": 10.0, "acted": True,
     "event": "denial", "level": "info", "timestamp": "2025-11-30T10:53:26Z"},
    {"seq": 7, "sandbox": "sb-1", "labels": {}, "kind": "DENIAL_KIND_ESCALATION", "action": "ACTION_AUDITED",
     "pid": 0, "comm": "", "time_unix_ns": T0 + 7_000_000_000, "escalation": "ESCALATION_ACTION_QUARANTINE",
     "after": 3, "within_seconds": 10.0, "acted": False,
     "event": "denial", "level": "info", "timestamp": "2025-11-30T10:53:27Z"},
    {"seq": 8, "sandbox": "sb-1", "labels": {"run": "ppo"}, "kind": "DENIAL_KIND_DNS", "action": "ACTION_REFUSED",
     "pid": 0, "comm": "", "time_unix_ns": T0 + 8_000_000_000, "name": "tunnel.evil.example", "query_type": "TXT",
     "reason": "DNS_REASON_NOT_ALLOWED", "protocol": 17,
     "event": "denial", "level": "info", "timestamp": "2025-11-30T10:53:28Z"},
    {"seq": 9, "sandbox": "sb-2", "labels": {}, "kind": "DENIAL_KIND_SYSCALL", "action": "ACTION_REFUSED",
     "pid": 13, "comm": "python3", "time_unix_ns": T0 + 9_000_000_000, "syscall": "ptrace", "number": 101,
     "args": [16, 1, 0, 0, 0, 0], "event": "denial", "level": "info", "timestamp": "2025-11-30T10:53:29Z"},
    {"sandbox": "sb-1", "generation": 1, "client": "unix:", "event": "policy_removed", "level": "info",
     "timestamp": "2025-11-30T10:53:30Z"},
]


@functools.cache
def ocsf_validator(class_name: str) -> jsonschema.protocols.Validator:
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=export.OCSF_VERSION)).get_class_schema(
        class_name, export.OCSF_PROFILES)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def assert_valid_ocsf(event: dict[str, Any]) -> None:
    name = {4001: "network_activity", 4003: "dns_activity", 1007: "process_activity"}[event["class_uid"]]
    errors = sorted(ocsf_validator(name).iter_errors(event), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def write_log(directory: Path, gzip_from: int = 2) -> Path:
    """The records spread over audit.jsonl.3.gz, .2.gz, .1 and the current file."""
    log = directory / "audit.jsonl"
    chunks = [RECORDS[0:2], RECORDS[2:4], RECORDS[4:7], RECORDS[7:]]
    for index, chunk in zip((3, 2, 1, 0), chunks, strict=True):
        text = "".join(json.dumps(r) + "\n" for r in chunk)
        if index == 0:
            log.write_text(text)
        elif index >= gzip_from:
            with gzip.open(log.with_name(f"{log.name}.{index}.gz"), "wt") as f:
                f.write(text)
        else:
            log.with_name(f"{log.name}.{index}").write_text(text)
    return log


def run_export(tmp_path: Path, *args: str) -> tuple[int, str]:
    out = tmp_path / "out"
    code = main(["export", "--audit-log", str(tmp_path / "audit.jsonl"), "-o", str(out), *args])
    return code, out.read_text() if out.exists() else ""


def test_rotated_and_gzip_files_are_read_oldest_first(tmp_path):
    log = write_log(tmp_path)
    (tmp_path / "audit.jsonl.x").write_text("not ours")  # not a rotated file: ignored
    assert [p.name for p in export.log_files(log)] == ["audit.jsonl.3.gz", "audit.jsonl.2.gz", "audit.jsonl.1",
                                                       "audit.jsonl"]
    assert list(export.read_records(export.log_files(log))) == RECORDS


def test_jsonl_round_trips_every_record(tmp_path):
    write_log(tmp_path)
    code, text = run_export(tmp_path)
    assert code == 0
    assert [json.loads(line) for line in text.splitlines()] == RECORDS


def test_every_denial_kind_is_valid_ocsf_with_its_disposition(tmp_path, capsys):
    write_log(tmp_path)
    code, text = run_export(tmp_path, "--format", "ocsf")
    assert code == 0
    events = [json.loads(line) for line in text.splitlines()]
    assert [e["metadata"]["uid"] for e in events] == [str(n) for n in range(1, 10)]
    for event in events:
        assert_valid_ocsf(event)
    assert [e["class_uid"] for e in events] == [4001, 4001, 4001, 1007, 1007, 1007, 1007, 4003, 1007]
    assert [e["disposition"] for e in events] == ["Blocked", "Allowed", "Blocked", "Blocked", "Blocked", "Blocked",
                                                  "Allowed", "Blocked", "Blocked"]
    connect, _, _, execve, _, kill, _, query, ptrace = events
    assert ptrace["message"] == "syscall ptrace refused in sandbox sb-2"
    assert ptrace["unmapped"]["syscall"] == "ptrace" and ptrace["unmapped"]["args"] == [16, 1, 0, 0, 0, 0]
    assert query["query"] == {"hostname": "tunnel.evil.example", "type": "TXT", "class": "IN"}
    assert query["rcode"] == "Refused" and query["type_uid"] == 400301
    assert connect["dst_endpoint"] == {"ip": "10.0.0.1", "port": 22}
    assert connect["connection_info"]["protocol_name"] == "tcp" and connect["type_uid"] == 400101
    assert connect["time"] == (T0 + 1_000_000_000) // 1_000_000
    assert execve["process"]["file"]["path"] == "/tmp/xmrig" and execve["process"]["cmd_line"] == "xmrig -o pool:3333"
    assert execve["type_uid"] == 100701 and kill["activity_name"] == "Terminate"
    assert "2 policy records have no OCSF class" in capsys.readouterr().err


def test_ocsf_validation_can_fail():
    """The check above is not vacuous: a wrong disposition id or a missing
    required field is caught."""
    event = export.to_ocsf(RECORDS[1], "host")
    assert event is not None
    assert_valid_ocsf(event)
    with pytest.raises(AssertionError):
        assert_valid_ocsf({**event, "disposition_id": 12345})
    with pytest.raises(AssertionError):
        assert_valid_ocsf({k: v for k, v in event.items() if k != "dst_endpoint"})


def test_filters_by_time_sandbox_and_kind(tmp_path):
    write_log(tmp_path)
    since = datetime.fromtimestamp((T0 + 2_000_000_000) / 1e9, UTC).isoformat()
    until = datetime.fromtimestamp((T0 + 5_000_000_000) / 1e9, UTC).isoformat()
    code, text = run_export(tmp_path, "--since", since, "--until", until)
    assert code == 0 and [json.loads(line)["seq"] for line in text.splitlines()] == [2, 3, 4, 5]
    code, text = run_export(tmp_path, "--sandbox", "sb-1", "--kind", "policy", "--kind", "connect")
    assert [json.loads(line)["event"] for line in text.splitlines()] == ["policy_applied", "denial", "policy_removed"]
    code, text = run_export(tmp_path, "--kind", "syscall", "--format", "csv")
    (row,) = csv.DictReader(io.StringIO(text))
    assert (row["syscall"], row["number"], row["args"]) == ("ptrace", "101", "0x10 0x1 0x0 0x0 0x0 0x0")
    code, text = run_export(tmp_path, "--kind", "exec", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 1 and rows[0]["path"] == "/tmp/xmrig" and rows[0]["argv"] == "xmrig -o pool:3333"
    assert list(rows[0]) == list(export.CSV_COLUMNS)


def test_relative_times():
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert export.parse_time("2h", "--since", now) == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert export.parse_time("2026-01-01T11:00:00", "--since", now) == datetime(2026, 1, 1, 11, tzinfo=UTC)


@pytest.mark.parametrize(("args", "message"), [
    (["--kind", "nope"], "--kind: unknown nope"),
    (["--since", "yesterday"], "--since: 'yesterday' is neither"),
    (["--since", "1h", "--until", "2h"], "--since is after --until"),
])
def test_bad_arguments_name_the_flag_and_write_nothing(tmp_path, capsys, args, message):
    write_log(tmp_path)
    code, text = run_export(tmp_path, *args)
    assert code == 2 and text == ""
    assert message in capsys.readouterr().err


def test_a_torn_record_fails_the_export_naming_file_and_line(tmp_path, capsys):
    log = write_log(tmp_path)
    with log.open("a") as f:
        f.write('{"seq": 9, "event": "den')
    code, text = run_export(tmp_path)
    assert code == 2 and text == ""
    assert not list(tmp_path.glob(".out.partial"))
    torn_line = len(log.read_text().splitlines())
    assert f"{log}:{torn_line}: not a JSON record" in capsys.readouterr().err


def test_no_log_is_one_clear_line(tmp_path, capsys):
    assert main(["export", "--audit-log", str(tmp_path / "none.jsonl")]) == 2
    assert "no audit log at" in capsys.readouterr().err
