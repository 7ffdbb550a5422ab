"""The per-kernel report of `make test-kernels`, read from each kernel's JUnit
XML (pytest --junitxml) and the properties the e2e fixtures record there:
the kernel release, its LSMs, the features it was expected to offer, and how
it refused an exec."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REFUSAL_WORDS = {"eperm": "EPERM", "killed": "SIGKILL"}
EXEC_MODULE = "tests.e2e.test_exec"


@dataclass
class KernelRun:
    name: str
    status: int                       # the run's exit status
    seconds: float
    properties: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)   # test id -> passed/failed/skipped/error
    messages: dict[str, str] = field(default_factory=dict)   # test id -> skip or failure message
    refusals: dict[str, str] = field(default_factory=dict)   # test id -> how its refused execs ended
    hang: str | None = None            # why the watchdog killed the run (tests/kernels/watch.py)
    running: str | None = None         # the test that had started and not ended when the run stopped
    kernel_trouble: list[str] = field(default_factory=list)  # lockup/stall/panic reports, with stacks

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)


def read(name: str, junit: Path, status: int, seconds: float) -> KernelRun:
    run = KernelRun(name, status, seconds)
    if not junit.exists():
        return run
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    run.properties = {p.get("name", ""): p.get("value", "") for p in suite.findall("./properties/property")}
    for case in suite.iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child, word in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            element = case.find(child)
            if element is not None:
                outcome = word
                message = element.get("message") or ""
                run.messages[test] = message.splitlines()[0] if message else ""
                break
        # A test that failed in its call and again in teardown has two results: keep the worst.
        if run.outcomes.get(test) in ("failed", "error"):
            continue
        run.outcomes[test] = outcome
        for prop in case.findall("./properties/property"):
            if prop.get("name") == "refused_exec":
                run.refusals[test] = prop.get("value", "")
    return run


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def render(runs: list[KernelRun]) -> str:
    lines = ["# Kernels (make test-kernels): the tests marked `kernel`, on each kernel", "",
             "| kernel | release | LSMs | exec refused by | passed | failed | skipped | exit | time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        p = run.properties
        mode = p.get("exec_enforcement", "?")
        how = {"lsm": "lsm (EPERM)", "tracepoint": "tracepoint (SIGKILL)"}.get(mode, mode)
        lines.append(f"| {run.name} | {p.get('kernel', '?')} | {p.get('lsm', '?')} | {how} | {run.count('passed')} "
                     f"| {run.count('failed') + run.count('error')} | {run.count('skipped')} | {run.status} "
                     f"| {minutes(run.seconds)} |")
    for run in runs:
        if run.hang:
            lines += ["", f"{run.name}: HUNG: {run.hang}"]
        if run.running and (run.hang or run.kernel_trouble or not run.outcomes):
            lines += ["", f"{run.name}: the test running when it stopped: {run.running}"]
        if run.kernel_trouble:
            lines += ["", f"{run.name}: the kernel reported a lockup, stall or panic (a failure even if "
                          "the tests passed):", "", "```", *run.kernel_trouble, "```"]
        if not run.outcomes:
            lines += ["", f"{run.name}: no results (exit {run.status}): see its console output above."]
        bad = [t for t, o in run.outcomes.items() if o in ("failed", "error")]
        if bad:
            lines += ["", f"{run.name}: failed", *[f"- {t}: {run.messages.get(t, '')}" for t in bad]]
        skipped = [t for t, o in run.outcomes.items() if o == "skipped"]
        if skipped:
            lines += ["", f"{run.name}: skipped (a feature this kernel is not expected to offer, "
                          f"expected here: {run.properties.get('expected_features', '?')})",
                      *[f"- {t}: {run.messages.get(t, '')}" for t in skipped]]
    exec_tests = sorted({t for run in runs for t in run.outcomes if t.startswith(EXEC_MODULE + "::")})
    if exec_tests:
        lines += ["", "Exec bypass suite (tests/e2e/test_exec.py): how each test's refused execs had to end, "
                      "and that it passed", "",
                  "| test | " + " | ".join(run.name for run in runs) + " |",
                  "|---|" + "---|" * len(runs)]
        for test in exec_tests:
            cells = []
            for run in runs:
                outcome = run.outcomes.get(test, "not run")
                refusal = REFUSAL_WORDS.get(run.refusals.get(test, ""), "")
                cells.append(f"{refusal}, passed" if outcome == "passed" and refusal else outcome)
            lines.append(f"| {test.split('::', 1)[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
