"""ctypes mirror of bpf/enforcer.h. tests/e2e/test_layout.py checks each struct
against the type bcc compiled from the header, field by field."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent.parent.parent / "bpf"
HEADER = BPF_DIR / "enforcer.h"


def _header_constants() -> dict[str, int]:
    """#define NAME <integer> lines of the header, so numbers are not written twice."""
    found = {}
    for match in re.finditer(r"^#define\s+(ENF_\w+)\s+(\d+)\b", HEADER.read_text(), re.M):
        found[match.group(1)] = int(match.group(2))
    return found


_C = _header_constants()
MAX_SANDBOXES = _C["ENF_MAX_SANDBOXES"]
MAX_PORT_RULES = _C["ENF_MAX_PORT_RULES"]
MAX_PREFIXES = _C["ENF_MAX_PREFIXES"]
MAX_LEVEL = _C["ENF_MAX_LEVEL"]
NUM_KINDS = _C["ENF_NUM_KINDS"]
KIND_CONNECT = _C["ENF_KIND_CONNECT"]
KIND_SENDMSG = _C["ENF_KIND_SENDMSG"]
KIND_SOCKET = _C["ENF_KIND_SOCKET"]
ACTION_REFUSED = _C["ENF_ACTION_REFUSED"]
ACTION_AUDITED = _C["ENF_ACTION_AUDITED"]
MODE_ENFORCE = _C["ENF_MODE_ENFORCE"]
MODE_AUDIT = _C["ENF_MODE_AUDIT"]
VERDICT_DENY = _C["ENF_VERDICT_DENY"]
VERDICT_ALLOW = _C["ENF_VERDICT_ALLOW"]
PROTO_ANY = _C["ENF_PROTO_ANY"]
GLOBAL_UNATTRIBUTED = _C["ENF_GLOBAL_UNATTRIBUTED"]
GLOBAL_LOST = _C["ENF_GLOBAL_LOST"]
NUM_GLOBALS = _C["ENF_NUM_GLOBALS"]

# Bits of the address prefix that come before the address in an LPM key.
LPM_KEY_HEADER_BITS = 64


class Sandbox(ctypes.Structure):
    _fields_ = [
        ("generation", ctypes.c_uint32),
        ("slot", ctypes.c_uint32),
        ("mode", ctypes.c_uint8),
        ("default_verdict", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 6),
    ]


class LpmKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("generation_be", ctypes.c_uint32),
        ("family_be", ctypes.c_uint32),
        ("addr", ctypes.c_uint8 * 16),
    ]


class PortRule(ctypes.Structure):
    _fields_ = [
        ("first", ctypes.c_uint16),
        ("last", ctypes.c_uint16),
        ("protocol", ctypes.c_uint8),
        ("verdict", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 2),
    ]


class RuleSet(ctypes.Structure):
    _fields_ = [
        ("count", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("rules", PortRule * MAX_PORT_RULES),
    ]


class Config(ctypes.Structure):
    _fields_ = [
        ("levels_mask", ctypes.c_uint64),
        ("events_per_sec", ctypes.c_uint64),
    ]


class Counters(ctypes.Structure):
    _fields_ = [
        ("refused", ctypes.c_uint64 * NUM_KINDS),
        ("audited", ctypes.c_uint64 * NUM_KINDS),
        ("suppressed", ctypes.c_uint64),
        ("lost", ctypes.c_uint64),
    ]


class Rate(ctypes.Structure):
    _fields_ = [
        ("window_start_ns", ctypes.c_uint64),
        ("count", ctypes.c_uint64),
    ]


class Event(ctypes.Structure):
    _fields_ = [
        ("boot_ns", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("generation", ctypes.c_uint32),
        ("slot", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
        ("kind", ctypes.c_uint8),
        ("action", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("sock_type", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("protocol", ctypes.c_uint16),
        ("addr", ctypes.c_uint8 * 16),
    ]


# (map name in bpf/network.bpf.c, which side of it, mirror) for the layout test.
MAP_LAYOUTS: list[tuple[str, str, type[ctypes.Structure]]] = [
    ("sandboxes", "Leaf", Sandbox),
    ("rules", "Key", LpmKey),
    ("rules", "Leaf", RuleSet),
    ("config", "Leaf", Config),
    ("counters", "Leaf", Counters),
    ("rate", "Leaf", Rate),
    ("event_layout", "Leaf", Event),
]
