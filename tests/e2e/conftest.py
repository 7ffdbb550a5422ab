"""Fixtures for the end-to-end tests, and nothing else: what they are built
from is in tests/e2e/harness (a real daemon process, real cgroups, a network
namespace that plays the outside world with no route off the machine).
Everything created is registered for clean-up when it is created, so a failing
test leaves nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enforcer.client import Enforcer
from tests.e2e.harness.agents import AgentRun, agent_spawner
from tests.e2e.harness.cleanup import Cleanup
from tests.e2e.harness.daemon import DaemonProcess
from tests.e2e.harness.dns import DnsWorld, build_dns_world
from tests.e2e.harness.env import SLOWDOWN, environment_problem, expected_exec_mode
from tests.e2e.harness.network import make_test_netns
from tests.e2e.harness.probes import EPERM, Probe, socket_probe


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.bpf)


def pytest_runtest_setup(item: pytest.Item) -> None:
    from tests.kernels import features

    for marker in item.iter_markers("needs_kernel"):
        feature, reason = marker.args
        why = features.missing(feature)
        if why is None:
            continue
        if feature in features.expected():
            pytest.fail(f"this kernel is expected to offer {feature} ({features.FEATURES[feature]}) "
                        f"but does not: {why}", pytrace=False)
        item.user_properties.append(("kernel_lacks", feature))
        pytest.skip(f"needs {feature} ({reason}): {why}")


@pytest.fixture(scope="session", autouse=True)
def _bpf_environment() -> None:
    problem = environment_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="session", autouse=True)
def _kernel_properties(record_testsuite_property: Callable[[str, object], None]) -> None:
    """What tests/kernels/report.py prints for each kernel (--junitxml)."""
    from enforcer.kernel.loader import lsm_list
    from tests.kernels import features

    record_testsuite_property("kernel", os.uname().release)
    record_testsuite_property("lsm", ",".join(lsm_list()) or "-")
    record_testsuite_property("expected_features", ",".join(sorted(features.expected())))
    record_testsuite_property("slowdown", SLOWDOWN)


@pytest.fixture(scope="session")
def session_cleanup() -> Iterator[Cleanup]:
    cleanup = Cleanup()
    yield cleanup
    cleanup.run()


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    registry = Cleanup()
    yield registry
    registry.run()


@pytest.fixture(scope="session")
def workdir(session_cleanup: Cleanup) -> Path:
    path = Path(tempfile.mkdtemp(prefix="enforcer-test-"))
    session_cleanup.add(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


@pytest.fixture(scope="session")
def daemon(workdir: Path, session_cleanup: Cleanup,
           record_testsuite_property: Callable[[str, object], None]) -> DaemonProcess:
    # A low event budget per sandbox keeps flood tests short; counters stay exact.
    proc = DaemonProcess(workdir, "--events-per-sec", "500")
    proc.start()
    session_cleanup.add(proc.stop)
    with proc.client() as enf:
        record_testsuite_property("exec_enforcement", enf.status().exec_enforcement)  # for the per-kernel report
    return proc


@pytest.fixture(scope="session")
def by_lsm(daemon: DaemonProcess) -> str | dict[str, int]:
    """What a refused bpf() (or any syscall an LSM hook stands for) gives a
    sandboxed probe on this kernel: EPERM with BPF-LSM, else "killed"."""
    with daemon.client() as enf:
        mode = enf.status().exec_enforcement
    assert mode == expected_exec_mode()
    return EPERM if mode == "lsm" else "killed"


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[Enforcer]:
    enf = daemon.client()
    yield enf
    enf.close()


@pytest.fixture(scope="session")
def cgroup_root(session_cleanup: Cleanup) -> Path:
    from enforcer.cgroupfs import cgroup2_mount, remove_cgroup

    root = cgroup2_mount() / f"enforcer-test-{os.getpid()}"
    root.mkdir()
    session_cleanup.add(lambda: remove_cgroup(root))
    return root


@pytest.fixture
def make_cgroup(cgroup_root: Path, cleanup: Cleanup, request: pytest.FixtureRequest) -> Callable[..., Path]:
    from enforcer.cgroupfs import remove_cgroup

    base = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:60]

    def make(name: str = "sb") -> Path:
        path = cgroup_root / base / name
        path.mkdir(parents=True)
        cleanup.add(lambda: remove_cgroup(cgroup_root / base))
        return path

    return make


@pytest.fixture
def sandbox_id(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:100]


@pytest.fixture(scope="session")
def netns(session_cleanup: Cleanup) -> str:
    """A namespace whose loopback carries the test hosts (harness.network)."""
    return make_test_netns(session_cleanup)


@pytest.fixture
def probe(netns: str) -> Probe:
    """Run probe ops as a real process inside a cgroup (and the test netns)."""
    return socket_probe(netns)


@pytest.fixture(scope="session")
def dns_world(session_cleanup: Cleanup) -> DnsWorld:
    return build_dns_world(session_cleanup)


@pytest.fixture
def spawn_agent(cleanup: Cleanup, tmp_path: Path) -> Callable[..., AgentRun]:
    return agent_spawner(cleanup, tmp_path)
