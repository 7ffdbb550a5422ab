"""The audit log file: size rotation with a kept count, and bad settings."""

from __future__ import annotations

import json

import pytest

from enforcer.daemon.audit import AuditFile, AuditLogError


def test_rotation_keeps_the_newest_files_and_every_line_whole(tmp_path):
    log = AuditFile(tmp_path / "audit.jsonl", max_bytes=1024, keep=3)
    for i in range(200):
        log.msg(f'{{"seq": {i}, "pad": "{"x" * 40}"}}')
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    lines = [line for name in ("audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1", "audit.jsonl")
             for line in (tmp_path / name).read_text().splitlines()]
    seqs = [int(line.split(":")[1].split(",")[0]) for line in lines]
    assert seqs == list(range(200 - len(seqs), 200))  # the newest, in order, none torn
    assert all((tmp_path / n).stat().st_size <= 1024 for n in names)
    assert (log.records, log.failures) == (200, 0)


def test_an_existing_log_is_appended_to(tmp_path):
    (tmp_path / "audit.jsonl").write_text('{"seq": 0}\n')
    log = AuditFile(tmp_path / "audit.jsonl")
    log.msg('{"seq": 1}')
    log.close()
    assert (tmp_path / "audit.jsonl").read_text() == '{"seq": 0}\n{"seq": 1}\n'


def test_bad_settings_and_unwritable_places_are_refused(tmp_path):
    with pytest.raises(AuditLogError, match="at least 1024"):
        AuditFile(tmp_path / "a", max_bytes=10)
    with pytest.raises(AuditLogError, match="at least 1"):
        AuditFile(tmp_path / "a", keep=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(AuditLogError, match="cannot open the audit log"):
        AuditFile(tmp_path / "file" / "audit.jsonl")


def test_the_resume_point_is_the_last_position_of_the_same_ring(tmp_path):
    """A position belongs to the ring it was read from: after an uninstall the
    pinned ring is new and counts from 0, and the old ring's higher positions
    must not make a successor skip its records (a silent loss)."""
    log = AuditFile(tmp_path / "audit.jsonl")
    for seq in range(1, 4):
        log.msg(json.dumps({"event": "denial", "seq": seq, "ring": "b00t-11", "ring_pos": 400_000 + seq * 64}))
    log.msg(json.dumps({"event": "denial", "seq": 4, "ring": "b00t-12", "ring_pos": 0}))
    log.msg(json.dumps({"event": "denial", "seq": 5, "ring": "", "ring_pos": -1}))  # a DNS denial: no ring
    log.msg(json.dumps({"event": "policy_applied", "sandbox": "a"}))
    log.close()
    assert log.resume_point("b00t-12") == (5, 0)
    assert log.resume_point("b00t-11") == (5, 400_192)
    assert log.resume_point("b00t-13") == (5, -1)  # never recorded from it: record all it holds again


def test_records_from_before_rings_were_named_resume_nothing(tmp_path):
    (tmp_path / "audit.jsonl").write_text('{"event": "denial", "seq": 9, "ring_pos": 5000}\n')
    assert AuditFile(tmp_path / "audit.jsonl").resume_point("b00t-1") == (9, -1)
    assert AuditFile(tmp_path / "empty.jsonl").resume_point("b00t-1") == (0, -1)
