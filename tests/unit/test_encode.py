"""Encoding a network policy into LPM entries: an LPM lookup over the encoded
entries must decide exactly as the policy's plain reading does."""

from __future__ import annotations

import ctypes
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enforcer.kernel import encode, layout
from enforcer.policy import PolicyError, parse_policy


def policy_of(allow=(), deny=(), default="deny"):
    return parse_policy({"sandbox": "s", "target": {"cgroup": "/x"},
                         "network": {"default": default, "allow": list(allow), "deny": list(deny)}})


def plain_verdict(policy, address: str, port: int, proto: int) -> bool:
    """What the policy says, read literally: deny wins, then allow, then default."""
    addr = ipaddress.ip_address(address)
    proto_name = {6: "tcp", 17: "udp"}[proto]

    def hit(rule) -> bool:
        return (addr in rule.to and rule.protocol.value in ("any", proto_name)
                and any(r.first <= port <= r.last for r in rule.port_ranges()))

    if any(hit(r) for r in policy.network.deny):
        return False
    if any(hit(r) for r in policy.network.allow):
        return True
    return policy.network.default.value == "allow"


def lpm_verdict(policy, address: str, port: int, proto: int) -> bool:
    """What the kernel program decides: longest matching prefix, then its rules."""
    addr = ipaddress.ip_address(address)
    family = encode.AF_INET if addr.version == 4 else encode.AF_INET6
    width = 32 if addr.version == 4 else 128
    compiled = encode.compile_prefixes(policy.network)
    best = None
    for (fam, plen, net), entries in compiled.items():
        mask = ((1 << plen) - 1) << (width - plen) if plen else 0
        if fam == family and int(addr) & mask == net and (best is None or plen > best[0]):
            best = (plen, entries)
    default = policy.network.default.value == "allow"
    if best is None:
        return default
    allowed = False
    for entry in best[1]:
        if entry.protocol not in (0, proto) or not entry.first <= port <= entry.last:
            continue
        if entry.verdict == layout.VERDICT_DENY:
            return False
        allowed = True
    return allowed or default


octet = st.integers(0, 3)
v4_rule = st.fixed_dictionaries(
    {"to": st.builds(lambda a, b, plen: str(ipaddress.ip_network(f"10.{a}.{b}.0/{plen}", strict=False)),
                     octet, octet, st.sampled_from([8, 16, 24, 30, 32]))},
    optional={"ports": st.lists(st.integers(1, 6), min_size=1, max_size=2),
              "protocol": st.sampled_from(["tcp", "udp", "any"])},
)


@settings(max_examples=300, deadline=None)
@given(allow=st.lists(v4_rule, max_size=4), deny=st.lists(v4_rule, max_size=3),
       default=st.sampled_from(["deny", "allow"]),
       probes=st.lists(st.tuples(octet, octet, octet, st.integers(1, 7), st.sampled_from([6, 17])), min_size=1,
                       max_size=10))
def test_lpm_encoding_decides_like_the_policy(allow, deny, default, probes):
    try:
        policy = policy_of(allow, deny, default)
    except PolicyError:
        return
    for a, b, c, port, proto in probes:
        address = f"10.{a}.{b}.{c}"
        assert lpm_verdict(policy, address, port, proto) == plain_verdict(policy, address, port, proto), address


def test_narrow_rule_does_not_hide_a_broader_one():
    policy = policy_of(allow=[{"to": "10.0.0.0/8", "ports": [443], "protocol": "tcp"},
                              {"to": "10.1.0.0/16", "ports": [53], "protocol": "udp"}])
    assert lpm_verdict(policy, "10.1.2.3", 443, 6)
    assert lpm_verdict(policy, "10.1.2.3", 53, 17)
    assert not lpm_verdict(policy, "10.1.2.3", 53, 6)


def test_ipv6_and_ipv4_are_separate_key_spaces():
    policy = policy_of(allow=[{"to": "::/0"}])
    assert lpm_verdict(policy, "2001:db8::1", 1, 6)
    assert not lpm_verdict(policy, "10.0.0.1", 1, 6)


def test_ranges_are_merged_and_the_cap_names_the_rule():
    policy = policy_of(allow=[{"to": "10.0.0.1", "ports": [1, 2, 3, "4-9", 20]}])
    (entries,) = encode.compile_prefixes(policy.network).values()
    assert [(e.first, e.last) for e in entries] == [(1, 9), (20, 20)]
    crowded = policy_of(allow=[{"to": "10.0.0.0/8", "ports": [2 * i for i in range(1, 10)]},
                               {"to": "10.0.0.1", "ports": [2 * i + 101 for i in range(8)]}])
    with pytest.raises(PolicyError) as info:
        encode.compile_prefixes(crowded.network)
    assert info.value.field == "network.allow[1]" and "10.0.0.1/32 is covered by 17" in info.value.reason


def test_lpm_key_bytes():
    addr = int(ipaddress.ip_address("10.1.2.0"))
    raw = encode.lpm_key_bytes(generation=0x01020304, family=encode.AF_INET, plen=24, addr=addr)
    assert raw[:4] == (64 + 24).to_bytes(4, "little")
    assert raw[4:8] == bytes([1, 2, 3, 4])          # big-endian: part of the matched prefix
    assert raw[8:12] == bytes([0, 0, 0, 2])
    assert raw[12:16] == bytes([10, 1, 2, 0]) and raw[16:] == bytes(12)


def be32(value: int) -> int:
    """The int whose little-endian bytes are ``value`` in big-endian order."""
    return int.from_bytes(value.to_bytes(4, "big"), "little")


def test_packed_bytes_match_the_ctypes_mirror():
    """The packed encoding against the mirror of bpf/enforcer.h, field by field."""
    key = layout.LpmKey(prefixlen=64 + 128, generation_be=be32(7), family_be=be32(encode.AF_INET6))
    addr = ipaddress.ip_address("2001:db8::5")
    ctypes.memmove(key.addr, addr.packed, 16)
    assert encode.lpm_key_bytes(7, encode.AF_INET6, 128, int(addr)) == bytes(key)

    entries = [encode.PortEntry(layout.VERDICT_DENY, 6, 22, 22), encode.PortEntry(layout.VERDICT_ALLOW, 0, 0, 65535)]
    value = layout.RuleSet(count=2)
    for i, entry in enumerate(entries):
        value.rules[i] = layout.PortRule(first=entry.first, last=entry.last, protocol=entry.protocol,
                                         verdict=entry.verdict)
    assert encode.rule_set_bytes(entries) == bytes(value)
    assert len(encode.rule_set_bytes([])) == ctypes.sizeof(layout.RuleSet)


def test_no_ports_means_every_port_including_zero():
    (entries,) = encode.compile_prefixes(policy_of(allow=[{"to": "::1"}]).network).values()
    assert [(e.first, e.last, e.protocol) for e in entries] == [(0, 65535, 0)]
