"""Fixtures for the tests that run real containers: a private dockerd and a
Podman with its own storage (tests/e2e/runtimes.py), each made once a session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from enforcer.cgroupfs import cgroup2_mount
from enforcer.oci import podman_oci_runtime
from tests.e2e.harness.cleanup import Cleanup
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


@dataclass(frozen=True)
class BridgeNetwork:
    name: str
    host: str  # the host's end of the bridge: where the tests' servers listen


# Test subnets, one per runtime: a bridge Docker leaves behind while its daemon
# is down keeps its subnet, which Podman then refuses to use.
BRIDGE_SUBNETS = {"docker": ("10.234.0.0/24", "10.234.0.1"), "podman": ("10.235.0.0/24", "10.235.0.1")}


@pytest.fixture
def bridge_network(runtime: Runtime, cleanup: Cleanup) -> BridgeNetwork:
    """A bridge network of the runtime the test makes: --internal (no default
    route in the containers), on a test subnet, whose only other end is the
    host's bridge address."""
    subnet, host = BRIDGE_SUBNETS[runtime.name]
    name = "enforcer-test"
    if runtime.name == "docker":
        runtime.run("network", "rm", name, check=False)
        runtime.run("network", "create", "--driver", "bridge", "--internal", "--subnet", subnet,
                    "--gateway", host, "-o", "com.docker.network.bridge.name=enf-test-br", name)
    else:
        runtime.run("network", "rm", "-f", name, check=False)
        runtime.run("network", "create", "--internal", "--subnet", subnet, "--gateway", host, name)
        # Podman's internal CNI bridge gives the host no address: the test makes
        # the bridge CNI will use, with the host's address, before any container.
        bridge = runtime.run("network", "inspect", name, "--format", "{{.NetworkInterface}}").stdout.strip()
        host_bridge(bridge, host, int(subnet.split("/")[1]), cleanup)
    cleanup.add(lambda: runtime.run("network", "rm", name, check=False))
    return BridgeNetwork(name, host)


def host_bridge(name: str, address: str, prefixlen: int, cleanup: Cleanup) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        if ip.link_lookup(ifname=name):
            ip.link("del", ifname=name)
        ip.link("add", ifname=name, kind="bridge")
        cleanup.add(lambda: _delete_link(name))
        index = ip.link_lookup(ifname=name)[0]
        ip.addr("add", index=index, address=address, prefixlen=prefixlen)
        ip.link("set", index=index, state="up")


def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        if ip.link_lookup(ifname=name):
            ip.link("del", ifname=name)
