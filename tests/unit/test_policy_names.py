"""Host names in policies (enforcer.policy): parsed apart from addresses,
matched exactly or as wildcards, denied over allowed, kept in their DNS form."""

from __future__ import annotations

import ipaddress

import pytest

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
    assert net.dns == DnsPolicy(upstream=(Upstream(ipaddress.ip_address("10.0.0.2")),
                                          Upstream(ipaddress.ip_address("10.0.0.3"), 5353),
                                          Upstream(ipaddress.ip_address("fd00::2"))), grace=10.0)
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
