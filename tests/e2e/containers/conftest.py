"""Fixtures for the tests that run real containers: a private dockerd and a
Podman with its own storage (tests/e2e/runtimes.py), each made once a session."""

from __future__ import annotations

from typing import Any

import pytest

from enforcer.cgroupfs import cgroup2_mount
from enforcer.oci import podman_oci_runtime
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
