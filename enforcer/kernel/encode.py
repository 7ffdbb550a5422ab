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
from collections import defaultdict
from dataclasses import dataclass

from enforcer.kernel import layout
from enforcer.policy import NetworkPolicy, NetworkRule, PolicyError, Protocol, Verdict
from enforcer.policy.model import IPNetwork

AF_INET = 2
AF_INET6 = 10
IPPROTO_TCP = 6
IPPROTO_UDP = 17

PROTOCOL_NUMBERS = {Protocol.ANY: layout.PROTO_ANY, Protocol.TCP: IPPROTO_TCP, Protocol.UDP: IPPROTO_UDP}
VERDICTS = {Verdict.ALLOW: layout.VERDICT_ALLOW, Verdict.DENY: layout.VERDICT_DENY}


@dataclass(frozen=True, order=True)
class PortEntry:
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
            origin.setdefault(key, f"network.{verdict.value}[{index}]")

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


def be32(value: int) -> int:
    """The int whose little-endian bytes are ``value`` in big-endian order."""
    return int.from_bytes(value.to_bytes(4, "big"), "little")


def lpm_key(generation: int, family: int, plen: int, addr: int) -> layout.LpmKey:
    key = layout.LpmKey()
    key.prefixlen = layout.LPM_KEY_HEADER_BITS + plen
    key.generation_be = be32(generation)
    key.family_be = be32(family)
    raw = addr.to_bytes(_width(family) // 8, "big")
    ctypes.memmove(key.addr, raw, len(raw))
    return key


def rule_set(entries: list[PortEntry]) -> layout.RuleSet:
    value = layout.RuleSet()
    value.count = len(entries)
    for i, entry in enumerate(entries):
        value.rules[i].first = entry.first
        value.rules[i].last = entry.last
        value.rules[i].protocol = entry.protocol
        value.rules[i].verdict = entry.verdict
    return value


def encode_network(network: NetworkPolicy, generation: int) -> list[tuple[layout.LpmKey, layout.RuleSet]]:
    return [
        (lpm_key(generation, family, plen, addr), rule_set(entries))
        for (family, plen, addr), entries in compile_prefixes(network).items()
    ]
