"""What a sandbox's DNS answers allowed: per generation of its policy, each
learned address with its port rules, expiry and the name it was learned for,
mirrored into the kernel's name_addrs map through a small writer (the guard;
a dict in unit tests). Pure bookkeeping: no threads, no sockets, times passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from enforcer.kernel import layout
from enforcer.kernel.encode import PROTOCOL_NUMBERS
from enforcer.kernel.names import Grant, grants_value, name_key, parse_grants, parse_name_key
from enforcer.policy import NameRule, NetworkPolicy

# One sandbox's share of the learned-address map (ENF_MAX_NAME_ADDRS over all):
# a sandbox resolving ever new addresses (a wildcard name, say) evicts its own
# soonest-expiring address instead of filling the map for everyone.
MAX_LEARNED_PER_SANDBOX = 2048
# An address already allowed until at least this close to the new expiry is
# not written again: a flood of identical answers costs no map writes.
REFRESH_SLACK_NS = 500_000_000

Address = tuple[int, bytes]                          # (family, address bytes)
Ports = dict[tuple[int, int, int], tuple[int, str | None]]  # (first, last, protocol) -> (expiry ns, name)


class MapWriter(Protocol):
    def write_entries(self, map_name: str, entries: list[tuple[bytes, bytes]]) -> None: ...
    def delete_entries(self, map_name: str, keys: list[bytes]) -> None: ...


@dataclass
class NameView:
    """What one generation of a sandbox's policy says about names."""

    generation: int
    network: NetworkPolicy
    audit: bool


class LearnedAddresses:
    """One sandbox's learned addresses, by generation. Names are kept so that a
    replaced policy can re-judge them (None: adopted from an earlier daemon)."""

    def __init__(self, writer: MapWriter, limit: int = MAX_LEARNED_PER_SANDBOX) -> None:
        self._writer = writer
        self._limit = limit
        self.tables: dict[int, dict[Address, Ports]] = {}

    def install(self, views: Iterable[NameView], name: str, addresses: list[tuple[int, bytes, int]],
                grace_ns: int, now_ns: int) -> None:
        """Allow an answer's (family, address, ttl) in every generation whose
        policy allows the name, for TTL + grace from now."""
        for view in views:
            rules = view.network.name_allowed(name)
            if not rules:
                continue
            table = self.tables.setdefault(view.generation, {})
            writes = []
            for family, addr, ttl in addresses:
                if (family, addr) not in table and len(table) >= self._limit:
                    self._evict(table, view.generation)
                if _learn(table, (family, addr), rules, now_ns + ttl * 1_000_000_000 + grace_ns, name):
                    writes.append((name_key(view.generation, family, addr), _value(table[(family, addr)])))
            self._writer.write_entries(layout.MAP_NAME_ADDRS, writes)

    def carry_forward(self, source_generation: int, view: NameView, now_ns: int) -> None:
        """What ``source_generation`` learned and has not expired, re-judged by
        the next policy and written for its generation."""
        source = self.tables.get(source_generation)
        if source is None:
            return
        target = self.tables.setdefault(view.generation, {})
        for address, ports in source.items():
            for expires, name in ports.values():
                if name is None or expires <= now_ns:
                    continue
                rules = view.network.name_allowed(name)
                if rules:
                    _learn(target, address, rules, expires, name)
        self._writer.write_entries(layout.MAP_NAME_ADDRS, [
            (name_key(view.generation, family, addr), _value(ports)) for (family, addr), ports in target.items()])

    def adopt(self, generation: int, entries: list[tuple[bytes, bytes]]) -> None:
        """The kernel's entries of a generation an earlier daemon served: kept
        until they expire (their names are not known)."""
        table = self.tables.setdefault(generation, {})
        for key, value in entries:
            _, family, addr = parse_name_key(key)
            ports = table.setdefault((family, addr), {})
            for grant in parse_grants(value):
                ports[(grant.first, grant.last, grant.protocol)] = (grant.expires_ns, None)

    def forget(self, generation: int) -> None:
        table = self.tables.pop(generation, None)
        if table:
            self._writer.delete_entries(layout.MAP_NAME_ADDRS, [
                name_key(generation, family, addr) for family, addr in table])

    def keep_only(self, generation: int) -> None:
        for other in [g for g in self.tables if g != generation]:
            self.forget(other)

    def forget_all(self) -> None:
        for generation in list(self.tables):
            self.forget(generation)

    def sweep(self, now_ns: int) -> None:
        """Drop what has expired (the kernel already ignores it: this frees room)."""
        for generation, table in self.tables.items():
            gone, rewrite = [], []
            for (family, addr), ports in list(table.items()):
                live = {k: v for k, v in ports.items() if v[0] > now_ns}
                if not live:
                    del table[(family, addr)]
                    gone.append(name_key(generation, family, addr))
                elif len(live) != len(ports):
                    table[(family, addr)] = live
                    rewrite.append((name_key(generation, family, addr), _value(live)))
            self._writer.delete_entries(layout.MAP_NAME_ADDRS, gone)
            self._writer.write_entries(layout.MAP_NAME_ADDRS, rewrite)

    def _evict(self, table: dict[Address, Ports], generation: int) -> None:
        """Make room in the sandbox's share: the address that would expire first goes."""
        family, addr = min(table, key=lambda k: max(expires for expires, _ in table[k].values()))
        del table[(family, addr)]
        self._writer.delete_entries(layout.MAP_NAME_ADDRS, [name_key(generation, family, addr)])


def _learn(table: dict[Address, Ports], address: Address, rules: tuple[NameRule, ...], expires: int,
           name: str) -> bool:
    """Merge a grant; True if the kernel's entry must be written."""
    ports = table.setdefault(address, {})
    changed = False
    for rule in rules:
        protocol = PROTOCOL_NUMBERS[rule.protocol]
        for r in rule.port_ranges():
            key = (r.first, r.last, protocol)
            old = ports.get(key)
            if old is None or old[0] < expires - REFRESH_SLACK_NS:
                ports[key] = (max(expires, old[0]) if old else expires, name)
                changed = True
    return changed


def _value(ports: Ports) -> bytes:
    grants = sorted((Grant(expires, first, last, protocol) for (first, last, protocol), (expires, _) in
                     ports.items()), reverse=True)[:layout.MAX_NAME_GRANTS]
    return grants_value(grants)
