"""Test split by privilege (as pyroute2 does): tests/unit needs nothing,
tests/e2e needs root, BPF and cgroup v2 and is marked ``bpf``.

Under ``--require-bpf`` (what `make test` and CI use) a bpf test that would be
skipped fails instead: CI must run the kernel tests, not skip them."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--require-bpf", action="store_true", help="fail, never skip, tests marked bpf")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and item.config.getoption("--require-bpf") and item.get_closest_marker("bpf"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"bpf test skipped under --require-bpf: {reason}"
    return report
