"""The audit log: every denial, escalation and policy change, as JSON lines
(rendered by structlog), appended to a file that is rotated by size.

Each record is one ``write()`` on an ``O_APPEND`` descriptor, so a record is in
the kernel's hands when the call returns (a daemon crash loses none) and is never
interleaved with another. A write that fails (disk full, permissions) is counted
and reported on stderr, and enforcement goes on: the kernel's verdicts and
counters never depend on the log.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import structlog

from enforcer.settings import DEFAULT_AUDIT_KEEP, DEFAULT_AUDIT_MAX_BYTES

AUDIT_LOGGER = "enforcer.audit"
REPORT_EVERY = 1000  # after the first failed write, report every this many
RESUME_SCAN_BYTES = 1 << 20

log = structlog.get_logger("enforcer.daemon")


class AuditLogError(RuntimeError):
    pass


class AuditFile:
    """A structlog logger (its methods take the rendered line) writing to
    ``path``; when a record would take the file past ``max_bytes`` the file
    becomes ``path.1`` (``path.1`` becomes ``path.2``, ...) and ``keep`` rotated
    files are kept."""

    def __init__(self, path: str | Path, max_bytes: int = DEFAULT_AUDIT_MAX_BYTES,
                 keep: int = DEFAULT_AUDIT_KEEP) -> None:
        if max_bytes < 1024:
            raise AuditLogError(f"--audit-max-bytes must be at least 1024, got {max_bytes}")
        if keep < 1:
            raise AuditLogError(f"--audit-keep must be at least 1, got {keep}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.failures = 0
        self.records = 0
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            self._open()
        except OSError as exc:
            raise AuditLogError(f"cannot open the audit log {self.path}: {exc.strerror}") from exc

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def resume_point(self, ring: str) -> tuple[int, int]:
        """(last seq, last position of ``ring`` recorded), from the end of the
        newest files that have them: where a restarted daemon carries on. A
        position recorded from another ring (one an uninstall removed, or
        another daemon's) says nothing about this one: -1 then, and the
        successor records again what it finds (a duplicate, never a loss)."""
        seq, ring_pos = 0, -1
        for path in (self.path, self.rotated(1)):
            try:
                with open(path, "rb") as f:
                    f.seek(max(0, os.fstat(f.fileno()).st_size - RESUME_SCAN_BYTES))
                    tail = f.read()
            except OSError:
                continue
            for line in reversed(tail.splitlines()):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # the first line of the scan can be cut
                if not isinstance(record, dict):
                    continue
                if not seq and isinstance(record.get("seq"), int):
                    seq = record["seq"]
                position = record.get("ring_pos")
                if ring_pos < 0 and record.get("ring") == ring and isinstance(position, int) and position >= 0:
                    ring_pos = position
                if seq and ring_pos >= 0:
                    return seq, ring_pos
            if seq:
                return seq, ring_pos
        return seq, ring_pos

    def rotated(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.rotated(self.keep).unlink(missing_ok=True)
        for index in range(self.keep - 1, 0, -1):
            if self.rotated(index).exists():
                os.replace(self.rotated(index), self.rotated(index + 1))
        os.replace(self.path, self.rotated(1))
        self._open()

    def msg(self, message: str) -> None:
        data = (message + "\n").encode()
        with self._lock:
            try:
                if self._fd is None:
                    self._open()
                elif self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
                assert self._fd is not None
                written = os.write(self._fd, data)
                if written != len(data):
                    # Take the partial record back out: the log never holds a broken line.
                    os.ftruncate(self._fd, self._size)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self._size += written
                self.records += 1
            except OSError as exc:
                self.failures += 1
                if self.failures == 1 or self.failures % REPORT_EVERY == 0:
                    log.error("audit_write_failed", path=str(self.path), error=exc.strerror or str(exc),
                              failures=self.failures)

    # structlog calls the method named after the level.
    debug = info = warning = warn = error = critical = exception = fatal = msg

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
