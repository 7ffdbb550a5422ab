"""Test split by privilege (as pyroute2 does): tests/unit needs nothing,
tests/e2e needs root, BPF and cgroup v2 and is marked ``bpf``.

Under ``--require-bpf`` (what `make test` and CI use) a bpf test that would be
skipped fails instead: CI must run the kernel tests, not skip them."""

from __future__ import annotations

import os

import pytest

# The tests fork (subprocess with preexec_fn) while gRPC channels are open.
# gRPC's fork handlers are for children that go on using gRPC; ours exec at
# once, and with the handlers on, a fork hung for good in _fork_exec (seen once
# on the host, once in the 6.1 VM; grpc/grpc#13998, #22624). Set before any
# import of grpc; the daemons the tests start inherit it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--require-bpf", action="store_true", help="fail, never skip, tests marked bpf")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    # A needs_kernel skip (a feature this kernel is not expected to offer) stays a skip.
    lacks_feature = any(name == "kernel_lacks" for name, _ in item.user_properties)
    if (report.skipped and not lacks_feature and item.config.getoption("--require-bpf")
            and item.get_closest_marker("bpf")):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"bpf test skipped under --require-bpf: {reason}"
    return report
