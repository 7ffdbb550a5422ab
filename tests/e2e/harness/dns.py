"""An "internet" namespace joined to an agent namespace by a veth pair
(neither has a default route or another interface), with a test DNS server
(tests/e2e/dnsworld.py) and test hosts, plus the same server on the host's
loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.harness.cleanup import Cleanup

AGENT_NETNS = f"enf-agent-{os.getpid()}"
INET_NETNS = f"enf-inet-{os.getpid()}"


class DnsWorld:
    def __init__(self, zone: Any, agent_netns: str) -> None:
        self.zone = zone
        self.agent_netns = agent_netns


def _veth_up(ns: Any, veth_name: str, address4: str, address6: str) -> int:
    """Bring up lo and the veth end with its addresses; returns lo's index."""
    lo = ns.link_lookup(ifname="lo")[0]
    veth = ns.link_lookup(ifname=veth_name)[0]
    for index in (lo, veth):
        ns.link("set", index=index, state="up")
    ns.addr("add", index=veth, address=address4, prefixlen=24)
    ns.addr("add", index=veth, address=address6, prefixlen=64)
    return lo


def build_dns_world(session_cleanup: Cleanup) -> DnsWorld:
    """Names served by a test DNS server in the inet namespace (10.233.0.53,
    fd00:233::53) and on the host's loopback (127.0.0.153); test hosts answer
    TCP 443 on 10.233.0.10-12 and fd00:233::10 (inet) and 127.0.0.10-12 (host)."""
    from pyroute2 import NetNS, netns

    from enforcer import netns as enf_netns
    from tests.e2e import dnsworld as w

    for name in (AGENT_NETNS, INET_NETNS):
        netns.create(name)
        session_cleanup.add(lambda name=name: netns.remove(name))
    with NetNS(INET_NETNS) as inet:
        inet.link("add", ifname="veth-inet", kind="veth", peer={"ifname": "veth-agent", "net_ns_fd": AGENT_NETNS})
        lo = _veth_up(inet, "veth-inet", w.INET4, w.INET6)
        inet.addr("add", index=lo, address="10.233.0.1", prefixlen=24)
        for address in ("fd00:233::10", "fd00:233::53"):  # bound by the test servers
            inet.addr("add", index=lo, address=address, prefixlen=128)
        assert sorted(link.get_attr("IFLA_IFNAME") for link in inet.get_links()) == ["lo", "veth-inet"]
    with NetNS(AGENT_NETNS) as agent:
        _veth_up(agent, "veth-agent", w.AGENT4, w.AGENT6)
        agent.route("add", dst="10.233.0.0", dst_len=24, gateway=w.INET4)
        agent.route("add", dst="fd00:233::", dst_len=64, gateway=w.INET6, family=socket.AF_INET6)
        # Network safety: no default route, no other interface.
        assert sorted(link.get_attr("IFLA_IFNAME") for link in agent.get_links()) == ["lo", "veth-agent"]
    for name in (AGENT_NETNS, INET_NETNS):  # IPv6 duplicate address detection would delay the addresses
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"], check=True)
    # `ip netns exec` shows the agent this resolv.conf: the resolver it is configured with.
    etc = Path("/etc/netns") / AGENT_NETNS
    etc.mkdir(parents=True, exist_ok=True)
    session_cleanup.add(lambda: shutil.rmtree(etc, ignore_errors=True))
    (etc / "resolv.conf").write_text(f"nameserver {w.DNS4}\noptions timeout:2 attempts:1\n")

    zone = w.Zone()
    inet_ns = enf_netns.open_named(INET_NETNS)
    session_cleanup.add(inet_ns.close)

    def serve_inet() -> list[Any]:
        udp, tcp = w.bound_sockets([w.DNS4, w.DNS6])
        hosts = [w.TestHost(w.listen_tcp(a, 443)) for a in ("10.233.0.10", "10.233.0.11", "10.233.0.12",
                                                             "fd00:233::10")]
        return [w.TestDnsServer(zone, udp, tcp), *hosts]

    for thing in enf_netns.run_in(inet_ns, serve_inet):
        session_cleanup.add(thing.close)
    udp, tcp = w.bound_sockets([w.LOCAL_DNS])
    session_cleanup.add(w.TestDnsServer(zone, udp, tcp).close)
    for address in ("127.0.0.10", "127.0.0.11", "127.0.0.12"):
        session_cleanup.add(w.TestHost(w.listen_tcp(address, 443)).close)
    return DnsWorld(zone, AGENT_NETNS)
