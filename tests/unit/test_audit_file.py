"""The audit log file: size rotation with a kept count, and bad settings."""

from __future__ import annotations

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
