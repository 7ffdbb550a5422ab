"""Encode a network policy into LPM trie entries.

Each distinct prefix in the policy becomes one entry whose rule set holds every
rule (allow and deny) whose prefix covers it. The kernel's longest-prefix lookup
then lands on one entry that carries everything needed to decide, so a narrow
rule never hides a broader one (allow 10.0.0.0/8 tcp/443 still applies to an
address that also matches a narrower udp rule).
"""

from __future__ import annotations

import ctypes
import ipaddress
import struct
from collections import defaultdict
from typing import NamedTuple

from enforcer.kernel import layout
from enforcer.policy import NetworkPolicy, NetworkRule, PolicyError, Protocol, Verdict
from enforcer.policy.model import IPNetwork

AF_INET = 2
AF_INET6 = 10
IPPROTO_TCP = 6
IPPROTO_UDP = 17

PROTOCOL_NUMBERS = {Protocol.ANY: layout.PROTO_ANY, Protocol.TCP: IPPROTO_TCP, Protocol.UDP: IPPROTO_UDP}
VERDICTS = {Verdict.ALLOW: layout.VERDICT_ALLOW, Verdict.DENY: layout.VERDICT_DENY}


class PortEntry(NamedTuple):
    # A NamedTuple, not a dataclass: a 10,000-rule policy creates one per port range.
    verdict: int
    protocol: int
    first: int
    last: int


# (family, prefix length, network address as an int)
PrefixKey = tuple[int, int, int]


def _prefix_key(net: IPNetwork) -> PrefixKey:
    family = AF_INET if net.version == 4 else AF_INET6
    return (family, net.prefixlen, int(net.network_address))


def _width(family: int) -> int:
    return 32 if family == AF_INET else 128


def _entries_of(rule: NetworkRule, verdict: Verdict) -> list[PortEntry]:
    return [
        PortEntry(VERDICTS[verdict], PROTOCOL_NUMBERS[rule.protocol], r.first, r.last)
        for r in rule.port_ranges()
    ]


def _merge(entries: list[PortEntry]) -> list[PortEntry]:
    """Union overlapping or adjacent ranges with the same verdict and protocol."""
    merged: list[PortEntry] = []
    for entry in sorted(set(entries)):
        last = merged[-1] if merged else None
        if (
            last is not None
            and (last.verdict, last.protocol) == (entry.verdict, entry.protocol)
            and entry.first <= last.last + 1
        ):
            merged[-1] = PortEntry(last.verdict, last.protocol, last.first, max(last.last, entry.last))
        else:
            merged.append(entry)
    return merged


def compile_prefixes(network: NetworkPolicy) -> dict[PrefixKey, list[PortEntry]]:
    """Every prefix of the policy with the full set of port entries that covers it."""
    own: dict[PrefixKey, list[PortEntry]] = defaultdict(list)
    origin: dict[PrefixKey, str] = {}
    for verdict, rules in ((Verdict.ALLOW, network.allow), (Verdict.DENY, network.deny)):
        for index, rule in enumerate(rules):
            key = _prefix_key(rule.to)
            own[key].extend(_entries_of(rule, verdict))
            origin.setdefault(key, f"network.{verdict.value}[{rule.index if rule.index >= 0 else index}]")

    lengths: dict[int, list[int]] = defaultdict(list)
    for family, plen, _ in own:
        lengths[family].append(plen)
    for family in lengths:
        lengths[family] = sorted(set(lengths[family]))

    compiled: dict[PrefixKey, list[PortEntry]] = {}
    for key in own:
        family, plen, addr = key
        width = _width(family)
        covering: list[PortEntry] = []
        for shorter in lengths[family]:
            if shorter > plen:
                break
            mask = ((1 << shorter) - 1) << (width - shorter) if shorter else 0
            covering.extend(own.get((family, shorter, addr & mask), ()))
        entries = _merge(covering)
        if len(entries) > layout.MAX_PORT_RULES:
            raise PolicyError(
                origin[key],
                f"{_describe(key)} is covered by {len(entries)} distinct port/protocol rules; "
                f"at most {layout.MAX_PORT_RULES} can apply to one address",
            )
        compiled[key] = entries
    return compiled


def _describe(key: PrefixKey) -> str:
    family, plen, addr = key
    net = ipaddress.ip_network((addr, plen)) if family == AF_INET6 else ipaddress.IPv4Network((addr, plen))
    return str(net)


# Packed straight to bytes: building ctypes structures field by field cost more
# than the map writes themselves for large policies. tests/unit/test_encode.py
# checks these bytes against the ctypes mirror of bpf/enforcer.h.
_RULE_SET_HEAD = struct.Struct("<II")
_PORT_RULE = struct.Struct("<HHBBxx")
RULE_SET_SIZE = ctypes.sizeof(layout.RuleSet)


def lpm_key_bytes(generation: int, family: int, plen: int, addr: int) -> bytes:
    width = _width(family)
    return (
        (layout.LPM_KEY_HEADER_BITS + plen).to_bytes(4, "little")
        + generation.to_bytes(4, "big")
        + family.to_bytes(4, "big")
        + addr.to_bytes(width // 8, "big").ljust(16, b"\0")
    )


def rule_set_bytes(entries: list[PortEntry]) -> bytes:
    packed = _RULE_SET_HEAD.pack(len(entries), 0) + b"".join(
        _PORT_RULE.pack(e.first, e.last, e.protocol, e.verdict) for e in entries
    )
    return packed.ljust(RULE_SET_SIZE, b"\0")


Compiled = dict[PrefixKey, list[PortEntry]]
MapEntry = tuple[bytes, bytes]


def pack_entries(compiled: Compiled, generation: int) -> list[MapEntry]:
    return [
        (lpm_key_bytes(generation, family, plen, addr), rule_set_bytes(entries))
        for (family, plen, addr), entries in compiled.items()
    ]


def encode_network(network: NetworkPolicy, generation: int) -> list[MapEntry]:
    return pack_entries(compile_prefixes(network), generation)
