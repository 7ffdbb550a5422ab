"""Probe processes that exist, in their cgroup and namespace, before their
policy is applied (as a container's do) and run their ops when told."""

from __future__ import annotations

import itertools
import json
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.harness.cleanup import Cleanup
from tests.e2e.harness.env import patience
from tests.e2e.harness.probes import PROBE


class AgentRun:
    """A probe process that exists (in its cgroup and namespace) before its
    policy is applied, as a container does, and runs its ops on ``go``."""

    def __init__(self, proc: subprocess.Popen[str], go_file: Path) -> None:
        self.proc = proc
        self.go_file = go_file

    def go(self, timeout: float = 60) -> list[str]:
        self.go_file.touch()
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            return [f"exit:{self.proc.returncode}", err[-800:]]
        return json.loads(out)


def agent_spawner(cleanup: Cleanup, tmp_path: Path) -> Callable[..., AgentRun]:
    from enforcer.cgroupfs import move_pid

    count = itertools.count()

    def spawn(cgroup: Path, *ops: dict[str, Any], netns_name: str | None = None) -> AgentRun:
        go_file = tmp_path / f"go-{next(count)}"
        command = [sys.executable, str(PROBE), str(go_file)]
        if netns_name:
            command = ["ip", "netns", "exec", netns_name, *command]
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: move_pid(0, cgroup))
        cleanup.add(lambda: proc.kill() if proc.poll() is None else None)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(list(ops)))
        proc.stdin.close()
        proc.stdin = None  # communicate() must not write again
        ready, _, _ = select.select([proc.stdout], [], [], patience(60))
        if not ready:
            proc.kill()
            raise AssertionError(f"the agent did not start within {patience(60):g} s: {proc.communicate()[1][-800:]}")
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        return AgentRun(proc, go_file)

    return spawn
