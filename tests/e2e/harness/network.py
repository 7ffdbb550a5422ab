"""The test network: a namespace whose loopback carries the test hosts and
that has no other interface, so nothing sent there leaves the machine."""

from __future__ import annotations

import os
import socket
import subprocess

from tests.e2e.harness.cleanup import Cleanup

NETNS = f"enf-test-{os.getpid()}"
# Test hosts: addresses on the test namespace's loopback only.
HOST4 = "10.231.0.1"
NET4 = "10.231.0.0/24"
HOST6 = "fd00:231::1"
NET6 = "fd00:231::/64"


def make_test_netns(session_cleanup: Cleanup) -> str:
    """A namespace whose loopback carries the test hosts 10.231.0.0/24 and
    fd00:231::/64. It has no other interface: nothing sent there leaves the machine."""
    from pyroute2 import NetNS, netns

    netns.create(NETNS)
    session_cleanup.add(lambda: netns.remove(NETNS))
    with NetNS(NETNS) as ns:
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up")
        ns.addr("add", index=lo, address=HOST4, prefixlen=24)
        ns.addr("add", index=lo, address=HOST6, prefixlen=64)
        # Make the whole /64 local, as 10.231.0.0/24 is by its local route.
        ns.route("add", dst="fd00:231::", dst_len=64, type="local", table=255, oif=lo, family=socket.AF_INET6)
        # Network safety: the namespace must have no way out.
        # (Unprivileged ICMP sockets are off by default in a new netns; enable them
        # so the test reaches our sock_create hook instead of the sysctl's EACCES.)
        assert [link.get_attr("IFLA_IFNAME") for link in ns.get_links()] == ["lo"]
    subprocess.run(["ip", "netns", "exec", NETNS, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"],
                   check=True)
    return NETNS
