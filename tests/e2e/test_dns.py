"""Allow by name: real processes resolve through the daemon's forwarder (their
port-53 traffic redirected in the kernel) and connect to what allowed names
resolved to, judged by address in the kernel. Names are served by a test DNS
server in an "internet" namespace (tests/e2e/dnsworld.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from dns.message import make_query

from enforcer.v1 import enforcer_pb2 as pb
from tests.e2e import dnsworld as w
from tests.e2e.harness.waits import wait_denials

pytestmark = pytest.mark.kernel  # the outcome depends on the kernel: runs on each (make test-kernels)

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
    return {"op": "connect", "proto": "tcp", "addr": addr, "port": port, "read": True, "timeout": 3}


def fetch(name: str, port: int = 443) -> dict[str, Any]:
    return {"op": "fetch", "name": name, "port": port}


def wait_file(path: Path, timeout: float = 60) -> None:
    """The agent got this far (a "touch" op): no sleep-and-hope under emulation."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"the agent did not reach {path}"
        time.sleep(0.01)


class Pause:
    """Where an agent stops midway: it says it got there, then waits to be let go."""

    def __init__(self, directory: Path) -> None:
        self.reached_file, self.release_file = directory / "pause-reached", directory / "pause-release"
        self.ops = [{"op": "touch", "path": str(self.reached_file)},
                    {"op": "wait_file", "path": str(self.release_file)}]

    def reached(self) -> None:
        wait_file(self.reached_file)

    def release(self) -> None:
        self.release_file.touch()


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


def test_literal_address_of_an_allowed_host_is_refused_until_resolved(client, make_cgroup, sandbox_id,
                                                                        spawn_agent, world):
    """Decided: only addresses this sandbox was given by an allowed answer are
    allowed. Knowing the address (or another sandbox resolving it) is not enough."""
    cg = make_cgroup()
    agent = spawn_agent(cg, connect("10.233.0.10"), resolve("pypi.test"), connect("10.233.0.10"),
                        netns_name=world.agent_netns)
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test", "ports": [443]}]))
    assert agent.go() == ["EPERM", "10.233.0.10", "OK:10.233.0.10"]


def test_address_expires_after_ttl_plus_grace(client, make_cgroup, sandbox_id, spawn_agent, world):
    world.zone.set("short.test", ("A", "10.233.0.11", 3))  # 3 s: the connect after it must fit, also emulated
    cg = make_cgroup()
    agent = spawn_agent(cg, resolve("short.test"), connect("10.233.0.11"), {"op": "sleep", "seconds": 4},
                        connect("10.233.0.11"), resolve("short.test"), connect("10.233.0.11"),
                        netns_name=world.agent_netns)
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "short.test", "ports": [443]}], grace=0))
    assert agent.go() == ["10.233.0.11", "OK:10.233.0.11", "OK", "EPERM", "10.233.0.11", "OK:10.233.0.11"]


def test_dns_over_tcp_cname_chain_and_wildcards(client, make_cgroup, sandbox_id, spawn_agent, world):
    cg = make_cgroup()
    agent = spawn_agent(cg, resolve("www.pypi.test", tcp=True), connect("10.233.0.12"),
                        resolve("files.hosted.test", tcp=True), resolve("a.b.hosted.test"), connect("10.233.0.11"),
                        resolve("hosted.test"), resolve("evil.test", tcp=True),
                        netns_name=world.agent_netns)
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "www.pypi.test", "ports": [443]},
                                                   {"to": "*.hosted.test", "ports": [443]}]))
    assert agent.go() == ["10.233.0.12", "OK:10.233.0.12", "10.233.0.11", "10.233.0.11", "OK:10.233.0.11",
                          "REFUSED", "REFUSED"]
    events = [e for e in wait_denials(client, sandbox_id, 2) if e.kind == pb.DENIAL_KIND_DNS]
    assert [(e.dns.name, e.dns.transport) for e in events] == [("hosted.test", pb.PROTOCOL_UDP),
                                                               ("evil.test", pb.PROTOCOL_TCP)]


def test_a_resolver_the_process_picks_itself_still_goes_through_the_forwarder(client, make_cgroup, sandbox_id,
                                                                              spawn_agent, world):
    """10.233.0.99 runs no DNS server: an answer can only come from the
    forwarder. The process still sees the resolver it addressed (recvfrom,
    getpeername), so resolvers that check the source accept the answer."""
    cg = make_cgroup()
    agent = spawn_agent(cg, resolve("pypi.test", server="10.233.0.99"), resolve("evil.test", server="10.233.0.99"),
                        resolve("pypi.test", server="10.233.0.99", tcp=True),
                        resolve("v6.test", server="fd00:233::99", type="AAAA"),
                        {"op": "peer", "server": "10.233.0.99", "name": "pypi.test"},
                        {"op": "peer", "server": "fd00:233::99", "name": "pypi.test"},
                        netns_name=world.agent_netns)
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test"}, {"to": "v6.test"}]))
    assert agent.go() == ["10.233.0.10", "REFUSED", "10.233.0.10", "fd00:233::10",
                          "10.233.0.99:53 10.233.0.99:53", "fd00:233::99:53 fd00:233::99:53"]


def test_ipv6_answers_allow_ipv6_connects(client, make_cgroup, sandbox_id, spawn_agent, world):
    cg = make_cgroup()
    agent = spawn_agent(cg, connect("fd00:233::10"), resolve("v6.test", type="AAAA", server=w.DNS6),
                        connect("fd00:233::10"), connect("10.233.0.10"),
                        netns_name=world.agent_netns)
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "v6.test", "ports": [443], "protocol": "tcp"}],
                            upstream=[w.DNS6]))
    assert agent.go() == ["EPERM", "fd00:233::10", "OK:fd00:233::10", "EPERM"]


def test_two_sandboxes_resolving_one_name_get_what_their_own_policy_says(client, make_cgroup, sandbox_id,
                                                                        spawn_agent, world):
    allowed_cg, other_cg = make_cgroup("allowed"), make_cgroup("other")
    allowed = spawn_agent(allowed_cg, resolve("pypi.test"), connect("10.233.0.10"), netns_name=world.agent_netns)
    other = spawn_agent(other_cg, {"op": "sleep", "seconds": 1}, resolve("pypi.test"), connect("10.233.0.10"),
                        resolve("files.hosted.test"), netns_name=world.agent_netns)
    client.apply(dns_policy(f"{sandbox_id}-a", allowed_cg, allow=[{"to": "pypi.test", "ports": [443]}]))
    client.apply(dns_policy(f"{sandbox_id}-b", other_cg, allow=[{"to": "files.hosted.test", "ports": [443]}]))
    assert allowed.go() == ["10.233.0.10", "OK:10.233.0.10"]
    assert other.go() == ["OK", "REFUSED", "EPERM", "10.233.0.11"]
    assert client.stats(f"{sandbox_id}-a").dns.refused == 0
    assert client.stats(f"{sandbox_id}-b").dns.refused == 1
    client.remove(f"{sandbox_id}-a")
    client.remove(f"{sandbox_id}-b")


def test_other_query_types_get_no_records_and_deny_wins(client, make_cgroup, sandbox_id, spawn_agent, world):
    world.zone.set("gist.hosted.test", ("A", "10.233.0.12", 300))
    cg = make_cgroup()
    agent = spawn_agent(cg, resolve("pypi.test", type="TXT"), resolve("pypi.test", type="MX"),
                        resolve("gist.hosted.test"), resolve("files.hosted.test"), netns_name=world.agent_netns)
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test"}, {"to": "*.hosted.test"}],
                            deny=[{"to": "gist.hosted.test"}]))
    assert agent.go() == ["NODATA", "NODATA", "REFUSED", "10.233.0.11"]
    [event] = [e for e in wait_denials(client, sandbox_id, 1) if e.kind == pb.DENIAL_KIND_DNS]
    assert (event.dns.name, event.dns.reason) == ("gist.hosted.test", pb.DNS_REASON_DENIED)


def test_audit_mode_forwards_and_reports(client, make_cgroup, sandbox_id, spawn_agent, world):
    cg = make_cgroup()
    agent = spawn_agent(cg, resolve("evil.test"), connect("10.233.0.12"), netns_name=world.agent_netns)
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test"}], mode="audit"))
    asked = world.zone.asked["evil.test"]
    assert agent.go() == ["10.233.0.12", "OK:10.233.0.12"]
    assert world.zone.asked["evil.test"] == asked + 1
    kinds = {(e.kind, e.action) for e in wait_denials(client, sandbox_id, 2)}
    assert kinds == {(pb.DENIAL_KIND_DNS, pb.ACTION_AUDITED), (pb.DENIAL_KIND_CONNECT, pb.ACTION_AUDITED)}
    assert client.stats(sandbox_id).dns.audited == 1


def test_sandbox_in_the_hosts_namespace(client, make_cgroup, sandbox_id, spawn_agent, world):
    """No namespace of its own: the forwarder listens on the host's loopback.
    The process addresses 127.0.0.154, where nothing listens."""
    cg = make_cgroup()
    agent = spawn_agent(cg, resolve("local.test", server="127.0.0.154"), connect("127.0.0.10"),
                        connect("127.0.0.11"), resolve("evil.test", server="127.0.0.154"))
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "local.test", "ports": [443]}], upstream=[w.LOCAL_DNS]))
    assert agent.go() == ["127.0.0.10", "OK:127.0.0.10", "EPERM", "REFUSED"]


def test_replace_keeps_what_the_new_policy_still_allows(client, make_cgroup, sandbox_id, spawn_agent, world,
                                                        tmp_path):
    cg = make_cgroup()
    pause = Pause(tmp_path)
    agent = spawn_agent(cg, resolve("pypi.test"), resolve("files.hosted.test"), *pause.ops,
                        connect("10.233.0.10"), connect("10.233.0.11"), netns_name=world.agent_netns)
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test"}, {"to": "files.hosted.test"}]))
    agent.go_file.touch()
    pause.reached()
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test"}]))
    pause.release()
    assert agent.go() == ["10.233.0.10", "10.233.0.11", "OK", "OK", "OK:10.233.0.10", "EPERM"]


def test_remove_stops_the_forwarder_and_bad_dns_input_changes_nothing(client, make_cgroup, sandbox_id, world):
    import grpc

    from enforcer.client import EnforcerError
    from enforcer.policy import parse_policy
    from enforcer.wire import policy_to_proto

    cg = make_cgroup()
    before = client.status().dns_forwarders
    good = dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test"}])
    client.apply(good)
    assert client.status().dns_forwarders == before + 1
    for field, value, reason in [("upstream", "dns.example", "network.dns.upstream[0]: "),
                                 ("grace", 7200.0, "network.dns.grace: ")]:
        bad = policy_to_proto(parse_policy(good))
        bad.network.allow[0].to = "other.test"
        if field == "upstream":
            bad.network.dns.upstream[0] = value
        else:
            bad.network.dns.grace_seconds = value
        with pytest.raises(EnforcerError) as info:
            client.apply(bad)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.details.startswith(reason)
    assert list(client.get(sandbox_id).policy.network.dns.upstream) == [w.DNS4]
    client.remove(sandbox_id)
    assert client.status().dns_forwarders == before


def test_a_namespace_entered_after_the_apply_is_served_from_its_first_refused_query(
        client, make_cgroup, sandbox_id, spawn_agent, world):
    """The cgroup was empty at the apply, so the forwarder listens in the
    daemon's namespace; a process in another namespace has its first query
    refused (EPERM, reported), after which that namespace is served too."""
    cg = make_cgroup()
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test", "ports": [443]}]))
    forwarders = client.status().dns_forwarders
    agent = spawn_agent(cg, resolve("pypi.test"), resolve("pypi.test", retry_for=30),
                        connect("10.233.0.10"), netns_name=world.agent_netns)
    assert agent.go() == ["EPERM", "10.233.0.10", "OK:10.233.0.10"]
    assert client.status().dns_forwarders == forwarders + 1
    refusals = wait_denials(client, sandbox_id, 1)  # the first query, and any retried before the daemon listened
    assert {(r.kind, r.destination.address, r.destination.port) for r in refusals} == {
        (pb.DENIAL_KIND_SENDMSG, w.DNS4, 53)}


def test_a_restarted_daemon_serves_names_again_and_keeps_what_was_learned(make_cgroup, sandbox_id, spawn_agent,
                                                                          world, tmp_path):
    from tests.e2e.harness.daemon import DaemonProcess

    proc = DaemonProcess(tmp_path)
    proc.start()
    pause = Pause(tmp_path)
    try:
        cg = make_cgroup()
        agent = spawn_agent(cg, resolve("pypi.test"), *pause.ops, connect("10.233.0.10"),
                            resolve("files.hosted.test"), connect("10.233.0.11"),
                            resolve("evil.test"), connect("10.233.0.12"), netns_name=world.agent_netns)
        with proc.client() as enf:
            enf.apply(dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test", "ports": [443]},
                                                        {"to": "files.hosted.test", "ports": [443]}]))
        agent.go_file.touch()
        pause.reached()
        assert proc.stop(keep_enforcing=True) == 0
        proc.start()
        with proc.client() as enf:
            assert enf.status().dns_forwarders == 1
            pause.release()
            assert agent.go() == ["10.233.0.10", "OK", "OK", "OK:10.233.0.10", "10.233.0.11", "OK:10.233.0.11",
                                  "REFUSED", "EPERM"]
            assert enf.stats(sandbox_id).dns.refused == 1
    finally:
        proc.stop()


def test_a_replace_can_move_the_upstream(client, make_cgroup, sandbox_id, spawn_agent, world, tmp_path):
    cg = make_cgroup()
    pause = Pause(tmp_path)
    agent = spawn_agent(cg, resolve("pypi.test"), *pause.ops, resolve("pypi.test"),
                        resolve("pypi.test", tcp=True), netns_name=world.agent_netns)
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test"}]))
    agent.go_file.touch()
    pause.reached()
    asked = world.zone.asked["pypi.test"]
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test"}], upstream=[w.DNS6, w.DNS4]))
    pause.release()
    assert agent.go() == ["10.233.0.10", "OK", "OK", "10.233.0.10", "10.233.0.10"]
    assert world.zone.asked["pypi.test"] == asked + 2


def test_garbage_gets_an_error_or_nothing_and_the_audit_record_exports_as_ocsf(
        client, daemon, make_cgroup, sandbox_id, spawn_agent, world):
    """Whatever a sandbox sends its forwarder, it goes on answering; names are
    matched whatever their case; the denial's audit record is valid OCSF."""
    from enforcer import export
    from tests.e2e.test_audit import records
    from tests.unit.test_export import assert_valid_ocsf

    query = make_query("pypi.test", "A").to_wire()
    cg = make_cgroup()
    agent = spawn_agent(cg, {"op": "raw", "server": w.DNS4, "hex": "00"},
                        {"op": "raw", "server": w.DNS4, "hex": "ab" * 12},
                        {"op": "raw", "server": w.DNS4, "hex": (query[:2] + b"\x80" + query[3:]).hex()},  # an answer
                        {"op": "raw", "server": w.DNS4, "hex": (query[:2] + b"\x28" + query[3:]).hex()},  # UPDATE
                        resolve("PyPI.TEST"), resolve("Evil.Test", type="TXT"), netns_name=world.agent_netns)
    client.apply(dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test"}]))
    short, garbage, answer, update, upper, evil = agent.go()
    assert short == "timeout"  # not even a header: nothing to answer
    assert bytes.fromhex(garbage)[3] & 0x0F == 1 and bytes.fromhex(answer)[3] & 0x0F == 1  # FORMERR
    assert bytes.fromhex(update)[3] & 0x0F == 4  # NOTIMP
    assert (upper, evil) == ("10.233.0.10", "REFUSED")
    [event] = [e for e in wait_denials(client, sandbox_id, 1) if e.kind == pb.DENIAL_KIND_DNS]
    assert (event.dns.name, event.dns.query_type) == ("evil.test", "TXT")
    deadline = time.monotonic() + 10
    while not (found := [r for r in records(daemon.audit_path) if r.get("sandbox") == sandbox_id
                         and r.get("kind") == "DENIAL_KIND_DNS"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ocsf = export.to_ocsf(found[0], "host")
    assert ocsf is not None and ocsf["query"]["hostname"] == "evil.test" and ocsf["rcode"] == "Refused"
    assert_valid_ocsf(ocsf)


def test_dns_refusals_are_counted_exactly_past_the_event_budget_and_scraped(make_cgroup, sandbox_id, spawn_agent,
                                                                           world, tmp_path):
    from tests.e2e.harness.daemon import DaemonProcess
    from tests.e2e.test_daemon import free_port
    from tests.e2e.test_metrics import scrape

    port = free_port()
    proc = DaemonProcess(tmp_path, "--metrics", f"127.0.0.1:{port}", "--events-per-sec", "1")
    proc.start()
    try:
        cg = make_cgroup()
        agent = spawn_agent(cg, *[resolve(f"x{i}.evil.test") for i in range(5)], netns_name=world.agent_netns)
        with proc.client() as enf:
            enf.apply(dns_policy(sandbox_id, cg, allow=[{"to": "pypi.test"}]))
            assert agent.go() == ["REFUSED"] * 5
            stats = enf.stats(sandbox_id)
            reported = wait_denials(enf, sandbox_id, 1)
            time.sleep(0.3)
            reported = wait_denials(enf, sandbox_id, 1)
            # One per second within the budget (more if the queries straddled seconds); all counted.
            assert stats.dns.refused == 5 and len(reported) <= 3
            assert stats.events_suppressed == 5 - len(reported)
            assert reported[0].dns.name == "x0.evil.test"
        samples = scrape(port)
        assert samples[("enforcer_denials_total", (("action", "refused"), ("kind", "dns"),
                                                    ("sandbox", sandbox_id)))] == 5
    finally:
        assert proc.stop() == 0


def test_without_an_upstream_the_hosts_resolvers_are_asked_from_the_daemons_namespace(
        make_cgroup, sandbox_id, spawn_agent, world, tmp_path):
    """The daemon runs in a mount namespace whose /etc/resolv.conf names the test
    server on the host's loopback (127.0.0.153): the host's resolver, which a
    sandbox in its own namespace could not reach itself."""
    from tests.e2e.harness.daemon import DaemonProcess

    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver {w.LOCAL_DNS}\n")
    wrapper = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'mount --bind "{conf}" /etc/resolv.conf && exec "$@"', "sh")
    proc = DaemonProcess(tmp_path, wrapper=wrapper)
    proc.start()
    try:
        cg = make_cgroup()
        agent = spawn_agent(cg, resolve("pypi.test", server=None), resolve("local.test"), connect("127.0.0.10"),
                            netns_name=world.agent_netns)
        asked = world.zone.asked["local.test"]
        with proc.client() as enf:
            enf.apply({"sandbox": sandbox_id, "target": {"cgroup": str(cg)},
                       "network": {"allow": [{"to": "pypi.test"}, {"to": "local.test"}]}})
            assert list(enf.get(sandbox_id).policy.network.dns.upstream) == []
        # 127.0.0.10 is the host's loopback, not the agent's: the connect is allowed but finds nothing there.
        assert agent.go() == ["10.233.0.10", "127.0.0.10", "ECONNREFUSED"]
        assert world.zone.asked["local.test"] == asked + 1
    finally:
        proc.stop()
