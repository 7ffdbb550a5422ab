"""A real daemon process with its own socket, audit log, state directory and
bpffs pin directory."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.e2e.harness.env import REPO, bpffs, patience

if TYPE_CHECKING:
    from enforcer.client import Enforcer


class DaemonProcess:
    """A daemon with its own socket, audit log, state directory and bpffs pin
    directory. ``stop`` ends its enforcement too (``--uninstall``) unless told
    to keep it, as a restart does."""

    def __init__(self, workdir: Path, *extra: str, wrapper: tuple[str, ...] = ()) -> None:
        """``wrapper``: a command the daemon is run under (its argv appended)."""
        self.wrapper = wrapper
        self.socket = str(workdir / "enforcer.sock")
        self.log_path = workdir / "daemon.log"
        self.audit_path = workdir / "audit.jsonl"
        self.state_dir = workdir / "state"
        self.pin_dir = bpffs() / f"enforcer-test-{os.getpid()}-{next(_instances)}"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dirs(self) -> list[str]:
        return ["--state-dir", str(self.state_dir), "--pin-dir", str(self.pin_dir)]

    def start(self) -> None:
        from enforcer.client import Enforcer

        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "enforcer.cli", "daemon", "--socket", self.socket,
             "--audit-log", str(self.audit_path), *self.dirs, *self.extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        with Enforcer(self.socket) as enf:
            for _ in range(int(patience(600))):
                if self.proc.poll() is not None:
                    break
                try:
                    enf.wait_ready(0.1)
                    return
                except Exception:
                    continue
            self.proc.kill()
            raise RuntimeError(f"daemon did not start:\n{self.log_path.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, keep_enforcing: bool = False) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=patience(20))
        self._log.close()
        if not keep_enforcing:
            self.uninstall()
        return code

    def uninstall(self) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "enforcer.cli", "daemon", "--uninstall", "--socket", self.socket,
                               *self.dirs], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert done.returncode == 0, done.stderr
        return done

    def log_text(self) -> str:
        return self.log_path.read_text()

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def client(self) -> Enforcer:
        from enforcer.client import Enforcer

        return Enforcer(self.socket)







# What a refused call returns to a probe (tests/e2e/syscall_probe.py) with BPF-LSM.
EPERM = {"returned": -1, "errno": 1}


_instances = itertools.count()
