"""The learned-address map's byte formats against the ctypes mirror of bpf/enforcer.h."""

from __future__ import annotations

import ctypes

from enforcer.kernel import layout, names


def test_key_matches_mirror():
    raw = names.name_key(7, 2, bytes([10, 0, 0, 1]))
    key = layout.NameKey.from_buffer_copy(raw)
    assert len(raw) == ctypes.sizeof(layout.NameKey)
    assert (key.generation, key.family, bytes(key.addr)) == (7, 2, bytes([10, 0, 0, 1]) + bytes(12))
    assert names.parse_name_key(raw) == (7, 2, bytes([10, 0, 0, 1]))
    assert layout.key_generation(layout.MAP_NAME_ADDRS, raw) == 7


def test_grants_match_mirror():
    grants = [names.Grant(123_456_789_000, 443, 443, 6), names.Grant(5, 1, 65535, 0)]
    raw = names.grants_value(grants)
    assert len(raw) == ctypes.sizeof(layout.NameGrants)
    value = layout.NameGrants.from_buffer_copy(raw)
    assert value.count == 2
    first = value.grants[0]
    assert (first.expires_ns, first.first, first.last, first.protocol) == (123_456_789_000, 443, 443, 6)
    assert names.parse_grants(raw) == grants
