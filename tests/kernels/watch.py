"""Keeping one kernel's run of the suite from hanging: the run is killed when
its progress file (tests/kernels/progress.py) stops changing for longer than a
test may take, or when the whole run outlasts its limit; afterwards, which test
was running and what the kernel said about lockups, stalls and panics.

A VM's own lockup detectors (tests/kernels/vm.sh) usually end a hung guest
within a minute; this is the backstop for a guest (or host) whose userspace
froze without the kernel noticing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.kernels.progress import FINISHED, STARTED

# What a kernel prints when it is stuck (the first line of each report).
# Any of them fails the kernel's run, even if every test passed.
TROUBLE = re.compile(r"BUG: |detected stall|blocked for more than \d+ seconds|Kernel panic|Oops|"
                     r"general protection fault")
KEEP_LINES = 60  # of each report: the message and its stacks


@dataclass
class Outcome:
    status: int
    hang: str | None        # why the watchdog killed the run, if it did


def run_watched(command: list[str], env: dict[str, str], cwd: Path, progress: Path,
                stall_seconds: float, total_seconds: float) -> Outcome:
    """Run ``command`` in its own process group; kill the group if ``progress``
    has not changed for ``stall_seconds`` or the run takes ``total_seconds``."""
    started = time.monotonic()
    proc = subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True)
    hang = None
    while proc.poll() is None:
        time.sleep(2)
        now = time.monotonic()
        try:
            quiet = time.time() - progress.stat().st_mtime
        except FileNotFoundError:
            quiet = now - started
        if now - started > total_seconds:
            hang = f"the run took over {total_seconds:.0f} s (its limit) and was killed"
        elif quiet > stall_seconds:
            hang = f"no test started or ended for {quiet:.0f} s (limit {stall_seconds:.0f} s): killed as hung"
        if hang:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
    return Outcome(proc.returncode, hang)


def running_test(progress: Path) -> str | None:
    """The test that had started and not ended when the run stopped."""
    running = None
    try:
        lines = progress.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        parts = line.split(" ", 2)
        if len(parts) != 3:
            continue  # cut short by the kill
        _, word, nodeid = parts
        if word == STARTED:
            running = nodeid
        elif word == FINISHED and nodeid in (running, "session"):
            running = None
    return running


def kernel_trouble(console: str) -> list[str]:
    """Each lockup, stall, hung-task, oops or panic report in a kernel log,
    with the stacks that follow it (at most KEEP_LINES lines each)."""
    lines = console.splitlines()
    kept: list[str] = []
    index = 0
    while index < len(lines):
        if TROUBLE.search(lines[index]):
            block = lines[index:index + KEEP_LINES]
            kept += block
            index += len(block)
        else:
            index += 1
    return kept


def host_kernel_log() -> list[str]:
    """The host kernel's log now (to compare before and after a run)."""
    try:
        done = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return done.stdout.splitlines() if done.returncode == 0 else []


def new_lines(before: list[str], after: list[str]) -> str:
    """What ``after`` has beyond ``before`` (a ring buffer: find where it went on)."""
    if before and before[-1] in after:
        last = len(after) - 1 - after[::-1].index(before[-1])
        return "\n".join(after[last + 1:])
    return "\n".join(after)
