"""Allow by name: real processes resolve through the daemon's forwarder (their
port-53 traffic redirected in the kernel) and connect to what allowed names
resolved to, judged by address in the kernel. Names are served by a test DNS
server in an "internet" namespace (tests/e2e/dnsworld.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enforcer.v1 import enforcer_pb2 as pb
from tests.e2e import dnsworld as w
from tests.e2e.conftest import wait_denials

ALLOWED = ("OK", "ECONNREFUSED")


def dns_policy(sandbox: str, cgroup: Path, allow: list[dict[str, Any]], deny: list[dict[str, Any]] | None = None,
               upstream: list[str] | None = None, **top: Any) -> dict[str, Any]:
    dns: dict[str, Any] = {"upstream": upstream if upstream is not None else [w.DNS4]}
    if "grace" in top:
        dns["grace"] = top.pop("grace")
    return {"sandbox": sandbox, "target": {"cgroup": str(cgroup)}, "labels": {"run": "dns"},
            "network": {"default": "deny", "allow": allow, "deny": deny or [], "dns": dns}, **top}


def resolve(name: str, server: str | None = w.DNS4, **extra: Any) -> dict[str, Any]:
    op = {"op": "resolve", "name": name, **extra}
    if server is not None:
        op["server"] = server
    return op


def connect(addr: str, port: int = 443) -> dict[str, Any]:
    return {"op": "connect", "proto": "tcp", "addr": addr, "port": port, "send": "", "timeout": 3}


def fetch(name: str, port: int = 443) -> dict[str, Any]:
    return {"op": "fetch", "name": name, "port": port}


@pytest.fixture
def world(dns_world):
    zone = dns_world.zone
    zone.set("pypi.test", ("A", "10.233.0.10", 300))
    zone.set("files.hosted.test", ("A", "10.233.0.11", 300))
    zone.set("a.b.hosted.test", ("A", "10.233.0.11", 300))
    zone.set("hosted.test", ("A", "10.233.0.11", 300))
    zone.set("evil.test", ("A", "10.233.0.12", 300))
    zone.set("www.pypi.test", ("CNAME", "cdn.fastly.test", 300))
    zone.set("cdn.fastly.test", ("A", "10.233.0.12", 300))
    zone.set("v6.test", ("AAAA", "fd00:233::10", 300), ("A", "10.233.0.10", 300))
    zone.set("local.test", ("A", "127.0.0.10", 300))
    return dns_world


def test_allowed_name_resolves_and_connects_unlisted_does_not(client, make_cgroup, sandbox_id, spawn_agent, world):
    cg = make_cgroup()
    agent = spawn_agent(cg, fetch("pypi.test"), connect("10.233.0.10", 80), connect("10.233.0.11"),
                        resolve("evil.test", server=None), resolve("evil.test"), connect("10.233.0.12"),
                        netns_name=world.agent_netns)
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test", "ports": [443], "protocol": "tcp"}]))
    asked_before = world.zone.asked["evil.test"]
    assert agent.go() == ["OK:10.233.0.10", "EPERM", "EPERM", "gaierror:-3", "REFUSED", "EPERM"]
    # The unlisted name never left the forwarder: DNS cannot carry data to it.
    assert world.zone.asked["evil.test"] == asked_before
    events = [e for e in wait_denials(client, sandbox_id, 5) if e.kind == pb.DENIAL_KIND_DNS]
    assert [(e.dns.name, e.dns.query_type, e.action) for e in events] == [
        ("evil.test", "A", pb.ACTION_REFUSED)] * 2
    assert events[0].dns.reason == pb.DNS_REASON_NOT_ALLOWED and dict(events[0].labels) == {"run": "dns"}
    stats = client.stats(sandbox_id)
    assert stats.dns.refused == 2 and stats.connect.refused == 3
