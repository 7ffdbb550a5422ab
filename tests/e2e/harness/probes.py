"""The socket probe (tests/e2e/probe.py) run as a real process in a sandbox,
and what a refused call returns to the syscall probes with BPF-LSM."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.harness.env import patience

PROBE = Path(__file__).resolve().parents[1] / "probe.py"
# What a refused call returns to a probe (tests/e2e/syscall_probe.py) with BPF-LSM.
EPERM = {"returned": -1, "errno": 1}

Probe = Callable[..., list[str]]


def socket_probe(netns: str) -> Probe:
    """Run probe ops as a real process inside ``cgroup`` (and the test netns)."""
    from enforcer.cgroupfs import move_pid

    def run(cgroup: Path | None, *ops: dict[str, Any], in_netns: bool = True, timeout: float = 60) -> list[str]:
        """``timeout``: seconds on this machine (patience scales it under emulation)."""
        command = [sys.executable, str(PROBE)]
        if in_netns:
            command = ["ip", "netns", "exec", netns, *command]
        result = subprocess.run(
            command,
            input=json.dumps(list(ops)),
            capture_output=True,
            text=True,
            timeout=patience(timeout),
            preexec_fn=(lambda: move_pid(0, cgroup)) if cgroup else None,
        )
        if result.returncode != 0:
            return [f"exit:{result.returncode}", result.stderr[-500:]]
        return json.loads(result.stdout)

    return run
