"""enforcer.daemon.dns.learned: the learned-address table, with a dict for
the kernel's map (no threads, no kernel; times passed in)."""

from __future__ import annotations

import socket

from enforcer.daemon.dns.learned import LearnedAddresses, NameView
from enforcer.kernel.names import parse_grants, parse_name_key
from enforcer.policy import parse_policy

S = 1_000_000_000


class MapWrites:
    """Stands in for KernelMaps (the learned-address map)."""

    def __init__(self) -> None:
        self.entries: dict[bytes, bytes] = {}

    def write_entries(self, name: str, entries: list[tuple[bytes, bytes]]) -> None:
        self.entries.update(entries)

    def delete_entries(self, name: str, keys: list[bytes]) -> None:
        for key in keys:
            self.entries.pop(key, None)

    def addresses(self, generation: int) -> list[int]:
        """The last byte of each IPv4 address the kernel holds for the generation."""
        return sorted(addr[-1] for g, _, addr in (parse_name_key(k) for k in self.entries) if g == generation)


def view(generation: int, allow: list[dict]) -> NameView:
    network = parse_policy({"sandbox": "s", "target": {"pid": 1}, "network": {"allow": allow}}).network
    return NameView(generation, network, False)


def answer(last_byte: int, ttl: int) -> list[tuple[int, bytes, int]]:
    return [(socket.AF_INET, bytes([10, 0, 0, last_byte]), ttl)]


def test_one_sandbox_cannot_take_more_than_its_share_of_learned_addresses():
    kernel = MapWrites()
    learned = LearnedAddresses(kernel, limit=4)
    views = [view(7, [{"to": "*.cdn.example", "ports": [443]}])]
    for i in range(6):  # each answer lives a second longer than the one before
        learned.install(views, f"n{i}.cdn.example", answer(i, 10 + i), 0, 0)
    assert kernel.addresses(7) == [2, 3, 4, 5]  # the two that would expire first were evicted, from the kernel too
    assert len(learned.tables[7]) == 4


def test_only_generations_whose_policy_allows_the_name_learn_it():
    kernel = MapWrites()
    learned = LearnedAddresses(kernel)
    views = [view(1, [{"to": "pypi.org", "ports": [443]}]), view(2, [{"to": "example.org"}])]
    learned.install(views, "pypi.org", answer(9, 60), 5 * S, 100 * S)
    assert (kernel.addresses(1), kernel.addresses(2)) == ([9], [])
    (value,) = kernel.entries.values()
    (grant,) = parse_grants(value)
    assert (grant.first, grant.last, grant.expires_ns) == (443, 443, 100 * S + 60 * S + 5 * S)  # TTL + grace


def test_a_replace_carries_forward_what_the_next_policy_still_allows():
    kernel = MapWrites()
    learned = LearnedAddresses(kernel)
    old = view(1, [{"to": "pypi.org"}, {"to": "gist.github.com"}])
    learned.install([old], "pypi.org", answer(1, 60), 0, 0)
    learned.install([old], "gist.github.com", answer(2, 60), 0, 0)
    learned.carry_forward(1, view(2, [{"to": "pypi.org"}]), 30 * S)
    assert kernel.addresses(2) == [1]  # the dropped name's address is not carried
    learned.keep_only(2)
    assert (kernel.addresses(1), kernel.addresses(2)) == ([], [1])


def test_a_sweep_drops_what_expired_and_a_forget_drops_a_generation():
    kernel = MapWrites()
    learned = LearnedAddresses(kernel)
    views = [view(3, [{"to": "*.example"}])]
    learned.install(views, "a.example", answer(1, 10), 0, 0)
    learned.install(views, "b.example", answer(2, 100), 0, 0)
    learned.sweep(50 * S)
    assert kernel.addresses(3) == [2]
    learned.forget_all()
    assert kernel.entries == {} and learned.tables == {}


def test_adopted_entries_are_kept_without_names_and_not_carried():
    kernel = MapWrites()
    earlier = LearnedAddresses(kernel)
    earlier.install([view(4, [{"to": "pypi.org"}])], "pypi.org", answer(7, 60), 0, 0)
    adopting = LearnedAddresses(MapWrites())
    adopting.adopt(4, list(kernel.entries.items()))
    (ports,) = adopting.tables[4].values()
    assert [name for _, name in ports.values()] == [None]
    adopting.carry_forward(4, view(5, [{"to": "pypi.org"}]), 0)
    assert adopting.tables[5] == {}  # no name: a replace cannot re-judge it
