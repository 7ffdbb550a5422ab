"""Addresses learned from DNS answers, as the name_addrs map holds them
(struct enf_name_key -> struct enf_name_grants in bpf/enforcer.h).

Packed straight to bytes like encode.py's rule sets; tests/unit/test_names.py
checks these formats against the ctypes mirror in layout.py.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from enforcer.kernel import layout

_KEY = struct.Struct("<II16s")
_HEAD = struct.Struct("<II")
_GRANT = struct.Struct("<QHHB3x")
GRANTS_SIZE = _HEAD.size + layout.MAX_NAME_GRANTS * _GRANT.size


class Grant(NamedTuple):
    expires_ns: int  # CLOCK_BOOTTIME, as bpf_ktime_get_boot_ns()
    first: int
    last: int
    protocol: int    # IPPROTO_* or layout.PROTO_ANY


def name_key(generation: int, family: int, addr: bytes) -> bytes:
    """``addr``: 4 or 16 bytes, network order."""
    return _KEY.pack(generation, family, addr)


def parse_name_key(key: bytes) -> tuple[int, int, bytes]:
    generation, family, addr = _KEY.unpack(key)
    return generation, family, addr[:4] if family == 2 else addr


def grants_value(grants: list[Grant]) -> bytes:
    """At most MAX_NAME_GRANTS grants (the caller keeps the latest-expiring)."""
    packed = _HEAD.pack(len(grants), 0) + b"".join(_GRANT.pack(*g) for g in grants)
    return packed.ljust(GRANTS_SIZE, b"\0")


def parse_grants(value: bytes) -> list[Grant]:
    count, _ = _HEAD.unpack_from(value)
    return [Grant(*_GRANT.unpack_from(value, _HEAD.size + i * _GRANT.size))
            for i in range(min(count, layout.MAX_NAME_GRANTS))]
