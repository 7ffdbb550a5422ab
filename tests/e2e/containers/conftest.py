"""Fixtures for the tests that run real containers: a private dockerd and a
Podman with its own storage (tests/e2e/runtimes.py), each made once a session."""

from __future__ import annotations

from typing import Any

import pytest

from enforcer.cgroupfs import cgroup2_mount
from enforcer.oci import podman_oci_runtime
from tests.e2e.conftest import Cleanup
from tests.e2e.runtimes import DockerDaemon, Runtime, podman


@pytest.fixture(scope="session")
def docker(session_cleanup: Any) -> Runtime:
    daemon = DockerDaemon()
    cli = daemon.start()
    session_cleanup.add(daemon.stop)
    cli.import_image()
    return cli


@pytest.fixture(scope="session")
def podman_cli(record_testsuite_property: Any) -> Runtime:
    cli = podman(cgroup2_mount())
    record_testsuite_property("podman_oci_runtime", " ".join(podman_oci_runtime(cgroup2_mount())))
    cli.import_image()
    return cli


@pytest.fixture(params=["docker", "podman"])
def runtime(request: pytest.FixtureRequest) -> Runtime:
    return request.getfixturevalue("docker" if request.param == "docker" else "podman_cli")


BRIDGE_SUBNET, BRIDGE_HOST = "10.234.0.0/24", "10.234.0.1"  # a test subnet; the host's end of the bridge


@pytest.fixture
def bridge_network(docker: Runtime, cleanup: Cleanup) -> str:
    """A Docker bridge network the test makes: --internal (no default route in
    the containers), on a test subnet, whose only other end is the host's
    bridge address, where the tests' servers listen."""
    docker.run("network", "rm", "enforcer-test", check=False)
    docker.run("network", "create", "--driver", "bridge", "--internal", "--subnet", BRIDGE_SUBNET,
               "--gateway", BRIDGE_HOST, "-o", "com.docker.network.bridge.name=enf-test-br", "enforcer-test")
    cleanup.add(lambda: docker.run("network", "rm", "enforcer-test", check=False))
    return "enforcer-test"
