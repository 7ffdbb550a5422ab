"""Name rules in the policy model, and the forwarder's wire handling (no kernel)."""

from __future__ import annotations

import socket
from pathlib import Path

import dns.message
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enforcer.daemon import dns as fwd
from enforcer.policy import DnsPolicy, NameRule, PolicyError, Upstream, parse_policy, policy_to_document
from enforcer.wire import policy_from_proto, policy_to_proto


def policy(network: dict) -> dict:
    return {"sandbox": "s", "target": {"pid": 1}, "network": network}


def test_names_and_addresses_split_and_round_trip():
    p = parse_policy(policy({
        "allow": [{"to": "PyPI.org.", "ports": [443], "protocol": "tcp"}, {"to": "10.0.0.0/8"},
                  {"to": "*.pythonhosted.org", "ports": [443]}],
        "deny": [{"to": "gist.github.com"}, {"to": "10.1.0.0/16"}],
        "dns": {"upstream": ["10.0.0.2", "10.0.0.3:5353", "[fd00::2]:53"], "grace": "10s"},
    }))
    net = p.network
    assert [r.name for r in net.allow_names] == ["pypi.org", "*.pythonhosted.org"]
    assert [str(r.to) for r in net.allow] == ["10.0.0.0/8"]
    assert [r.name for r in net.deny_names] == ["gist.github.com"]
    assert net.dns == DnsPolicy(upstream=(Upstream(__import__("ipaddress").ip_address("10.0.0.2")),
                                          Upstream(__import__("ipaddress").ip_address("10.0.0.3"), 5353),
                                          Upstream(__import__("ipaddress").ip_address("fd00::2"))), grace=10.0)
    assert parse_policy(policy_to_document(p)) == p
    assert policy_from_proto(policy_to_proto(p)) == p


def test_names_alone_turn_dns_on_with_defaults_and_nothing_turns_it_off():
    assert parse_policy(policy({"allow": [{"to": "pypi.org"}]})).network.dns == DnsPolicy()
    assert parse_policy(policy({"allow": [{"to": "10.0.0.1"}]})).network.dns is None
    off = parse_policy(policy({}))
    assert not off.network.by_name and policy_from_proto(policy_to_proto(off)) == off
    refuse_all = parse_policy(policy({"dns": {}}))
    assert refuse_all.network.by_name and refuse_all.network.name_allowed("pypi.org") is None


@pytest.mark.parametrize(("rule", "name", "matches"), [
    ("pypi.org", "pypi.org", True),
    ("pypi.org", "www.pypi.org", False),
    ("*.pythonhosted.org", "files.pythonhosted.org", True),
    ("*.pythonhosted.org", "a.b.pythonhosted.org", True),
    ("*.pythonhosted.org", "pythonhosted.org", False),
    ("*.pythonhosted.org", "evilpythonhosted.org", False),
])
def test_name_rule_matching(rule, name, matches):
    assert NameRule(rule).matches(name) is matches


def test_deny_name_wins_over_wildcard_allow():
    net = parse_policy(policy({"allow": [{"to": "*.github.com", "ports": [443]}],
                               "deny": [{"to": "gist.github.com"}]})).network
    assert net.name_allowed("api.github.com") == (NameRule("*.github.com", net.allow_names[0].ports),)
    assert net.name_allowed("gist.github.com") is None


def test_internationalized_names_are_kept_in_their_dns_form():
    net = parse_policy(policy({"allow": [{"to": "Bücher.de"}, {"to": "*.bücher.de"}]})).network
    assert [r.name for r in net.allow_names] == ["xn--bcher-kva.de", "*.xn--bcher-kva.de"]
    assert net.name_allowed("shop.xn--bcher-kva.de") is not None


def test_an_all_digit_name_is_a_bad_address_not_a_name():
    with pytest.raises(PolicyError, match="not an IPv4 or IPv6 address"):
        parse_policy(policy({"allow": [{"to": "10.0.0.300"}]}))


def query(name: str, qtype: str = "A") -> bytes:
    return dns.message.make_query(name, qtype).to_wire()


def test_parse_question():
    q = fwd.parse_question(query("PyPI.Org", "AAAA"))
    assert q is not None and (q.name, q.qtype) == ("pypi.org", 28)
    assert fwd.parse_question(b"\x00" * 5) is None
    response = dns.message.make_response(dns.message.make_query("pypi.org", "A")).to_wire()
    assert fwd.parse_question(response) is None  # an answer, not a query


def test_refusal_keeps_id_and_question():
    data = query("evil.example")
    q = fwd.parse_question(data)
    reply = dns.message.from_wire(fwd.reply_with(data, q, fwd.RCODE_REFUSED))
    assert reply.id == dns.message.from_wire(data).id and reply.rcode() == 5
    assert reply.question[0].name.to_text() == "evil.example." and not reply.answer


def test_answer_addresses_follow_the_cname_chain_only():
    q_wire = dns.message.make_query("www.pypi.org", "A")
    response = dns.message.make_response(q_wire)
    response.answer += [
        dns.rrset.from_text("www.pypi.org.", 60, "IN", "CNAME", "cdn.fastly.net."),
        dns.rrset.from_text("cdn.fastly.net.", 300, "IN", "A", "151.101.0.223", "151.101.64.223"),
        dns.rrset.from_text("unrelated.example.", 300, "IN", "A", "192.0.2.1"),
    ]
    q = fwd.parse_question(q_wire.to_wire())
    assert q is not None
    found = fwd.answer_addresses(response.to_wire(), q)
    assert sorted(found or []) == [(socket.AF_INET, socket.inet_aton("151.101.0.223"), 60),
                                   (socket.AF_INET, socket.inet_aton("151.101.64.223"), 60)]
    other = fwd.parse_question(query("other.example"))
    assert other is not None and fwd.answer_addresses(response.to_wire(), other) is None


def test_ttl_is_capped():
    q_wire = dns.message.make_query("pypi.org", "A")
    response = dns.message.make_response(q_wire)
    response.answer.append(dns.rrset.from_text("pypi.org.", 10 ** 6, "IN", "A", "151.101.0.223"))
    q = fwd.parse_question(q_wire.to_wire())
    assert q is not None
    assert fwd.answer_addresses(response.to_wire(), q) == [(socket.AF_INET, socket.inet_aton("151.101.0.223"),
                                                            fwd.MAX_TTL_S)]


def test_host_resolvers(tmp_path: Path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nsearch example\nnameserver bogus\n")
    assert [str(u) for u in fwd.host_resolvers(conf)] == ["127.0.0.53", "fe80::1"]
    assert fwd.host_resolvers(tmp_path / "missing") == ()


class MapWrites:
    """Stands in for SandboxGuard's learned-address map (no kernel in unit tests)."""

    def __init__(self) -> None:
        self.entries: dict[bytes, bytes] = {}

    def write_entries(self, name: str, entries: list[tuple[bytes, bytes]]) -> None:
        self.entries.update(entries)

    def delete_entries(self, name: str, keys: list[bytes]) -> None:
        for key in keys:
            self.entries.pop(key, None)


def test_one_sandbox_cannot_take_more_than_its_share_of_learned_addresses(monkeypatch):
    monkeypatch.setattr(fwd, "MAX_LEARNED_PER_SANDBOX", 4)
    guard = MapWrites()
    forwarder = fwd.DnsForwarder(guard)  # type: ignore[arg-type]
    try:
        network = parse_policy(policy({"allow": [{"to": "*.cdn.example", "ports": [443]}]})).network
        resolver = fwd.SandboxResolver("s", 0, [fwd.NameView(7, network, False)], (), True, 0)
        for i in range(6):  # each answer lives a second longer than the one before
            forwarder._install(resolver, f"n{i}.cdn.example", [(socket.AF_INET, bytes([10, 0, 0, i]), 10 + i)])
        kept = sorted(addr[-1] for _, _, addr in (fwd.parse_name_key(k) for k in guard.entries))
        assert kept == [2, 3, 4, 5]  # the two that would expire first were evicted, from the kernel too
        assert len(resolver.learned[7].entries) == 4
    finally:
        forwarder.stop()


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda name, qtype, junk: query(name, qtype)[:junk] if junk else query(name, qtype),
                           st.from_regex(r"[a-zA-Z0-9-]{1,20}(\.[a-zA-Z0-9-]{1,20}){0,3}", fullmatch=True),
                           st.sampled_from(["A", "AAAA", "TXT", "ANY", "HTTPS"]), st.integers(0, 40))))
def test_any_bytes_get_a_question_an_error_answer_or_nothing(data: bytes):
    """What a sandbox sends the forwarder never raises: a question, or an
    answer with an error code, or nothing at all (fewer than 12 bytes)."""
    question = fwd.parse_question(data)
    if question is not None:
        assert question.end <= len(data) and question.name == question.name.lower()
        reply = fwd.reply_with(data, question, fwd.RCODE_REFUSED)
    else:
        reply = fwd.reply_with(data, None, fwd.RCODE_FORMERR)
    if len(data) < 12:
        assert reply is None
    else:
        assert reply is not None and reply[:2] == data[:2] and reply[2] & 0x80
