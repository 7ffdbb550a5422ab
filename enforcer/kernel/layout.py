"""ctypes mirror of bpf/enforcer.h. tests/e2e/test_layout.py checks each struct
against the type bcc compiled from the header, field by field."""

from __future__ import annotations

import ctypes
import mmap
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


def kind_number(macro: str) -> int:
    """The kernel's number for a denial kind, by its ENF_KIND_* name (enforcer.kinds names each)."""
    return _C[macro]


MAX_SANDBOXES = _C["ENF_MAX_SANDBOXES"]
MAX_PORT_RULES = _C["ENF_MAX_PORT_RULES"]
MAX_PREFIXES = _C["ENF_MAX_PREFIXES"]
MAX_LEVEL = _C["ENF_MAX_LEVEL"]
NUM_KINDS = _C["ENF_NUM_KINDS"]
KIND_CONNECT = _C["ENF_KIND_CONNECT"]
KIND_SENDMSG = _C["ENF_KIND_SENDMSG"]
KIND_SOCKET = _C["ENF_KIND_SOCKET"]
KIND_EXEC = _C["ENF_KIND_EXEC"]
KIND_DEVICE = _C["ENF_KIND_DEVICE"]
KIND_ESCALATION = _C["ENF_KIND_ESCALATION"]
KIND_DNS = _C["ENF_KIND_DNS"]
KIND_SYSCALL = _C["ENF_KIND_SYSCALL"]
KIND_ESCAPE = _C["ENF_KIND_ESCAPE"]
ESCAPE_MOVE = _C["ENF_ESCAPE_MOVE"]
ESCAPE_CLONE = _C["ENF_ESCAPE_CLONE"]
ESCAPE_SIGNAL = _C["ENF_ESCAPE_SIGNAL"]
MAX_SYSCALL_RULES = _C["ENF_MAX_SYSCALL_RULES"]
SYSCALL_ARGS = _C["ENF_SYSCALL_ARGS"]
MAX_NAME_ADDRS = _C["ENF_MAX_NAME_ADDRS"]
MAX_NAME_GRANTS = _C["ENF_MAX_NAME_GRANTS"]
DNS_PORT = _C["ENF_DNS_PORT"]
ESCALATE_MAX = _C["ENF_ESCALATE_MAX"]
ESCALATE_QUARANTINE = _C["ENF_ESCALATE_QUARANTINE"]
ESCALATE_FREEZE = _C["ENF_ESCALATE_FREEZE"]
ESCALATE_KILL = _C["ENF_ESCALATE_KILL"]
MAX_EXEC_IDS = _C["ENF_MAX_EXEC_IDS"]
MAX_EXEC_PATHS = _C["ENF_MAX_EXEC_PATHS"]
PATH_MAX = _C["ENF_PATH_MAX"]
ARGV_BYTES = _C["ENF_ARGV_BYTES"]
EVENT_PATH = _C["ENF_EVENT_PATH"]
EXEC_FILE_ALLOW = _C["ENF_EXEC_FILE_ALLOW"]
EXEC_FILE_DENY = _C["ENF_EXEC_FILE_DENY"]
EXEC_DIR_ALLOW = _C["ENF_EXEC_DIR_ALLOW"]
EXEC_DIR_DENY = _C["ENF_EXEC_DIR_DENY"]
REASON_NOT_ALLOWED = _C["ENF_REASON_NOT_ALLOWED"]
REASON_DENIED = _C["ENF_REASON_DENIED"]
REASON_UNNAMED = _C["ENF_REASON_UNNAMED"]
REASON_UNRESOLVED = _C["ENF_REASON_UNRESOLVED"]
REASON_SCRIPT = _C["ENF_REASON_SCRIPT"]
ACTION_REFUSED = _C["ENF_ACTION_REFUSED"]
ACTION_AUDITED = _C["ENF_ACTION_AUDITED"]
MODE_ENFORCE = _C["ENF_MODE_ENFORCE"]
MODE_AUDIT = _C["ENF_MODE_AUDIT"]
VERDICT_DENY = _C["ENF_VERDICT_DENY"]
VERDICT_ALLOW = _C["ENF_VERDICT_ALLOW"]
VERDICT_NONE = _C["ENF_VERDICT_NONE"]
PROTO_ANY = _C["ENF_PROTO_ANY"]
GLOBAL_UNATTRIBUTED = _C["ENF_GLOBAL_UNATTRIBUTED"]
GLOBAL_LOST = _C["ENF_GLOBAL_LOST"]
GLOBAL_UNTRACKED = _C["ENF_GLOBAL_UNTRACKED"]
NUM_GLOBALS = _C["ENF_NUM_GLOBALS"]
RINGBUF_BYTES = _C["ENF_RINGBUF_PAGES"] * mmap.PAGESIZE  # PAGE_SIZE in the BPF C

# Maps that hold a generation's rules (names as in bpf/*.c): what an apply writes
# and a replace or remove deletes.
MAP_RULES = "rules"
MAP_EXEC_IDS = "exec_ids"
MAP_EXEC_PATHS = "exec_paths"
MAP_SYSCALL_RULES = "syscall_rules"
# Addresses learned from DNS answers, keyed by generation too; written by the forwarder.
MAP_NAME_ADDRS = "name_addrs"
# The daemon's other maps, each named once (as in bpf/*.c).
MAP_SANDBOXES = "sandboxes"              # cgroup id -> Sandbox
MAP_CONFIG = "config"                    # [0] -> Config
MAP_COUNTERS = "counters"                # slot -> per-CPU Counters
MAP_RATE = "rate"                        # slot -> per-CPU Rate (the event budget)
MAP_GLOBALS = "globals"                  # ENF_GLOBAL_* -> per-CPU count
MAP_GPU_MAJORS = "gpu_majors"            # major -> 1
MAP_ESCALATION = "escalation"            # slot -> Escalation
MAP_ACTIVE = "active"                    # [0] -> the acting build (pinned beside the layouts)
MAP_DNS_FORWARDERS = "dns_forwarders"    # FwdKey -> Forwarder
MAP_DNS_COUNTERS = "dns_counters"        # slot -> DnsCounters (the forwarder's, written by the daemon)
MAP_SANDBOXED_TASKS = "sandboxed_tasks"  # tgid -> Tracked
MAP_EVENTS = "events"                    # the ring buffer
DAEMON_MAPS = (MAP_SANDBOXES, MAP_RULES, MAP_EXEC_IDS, MAP_EXEC_PATHS, MAP_SYSCALL_RULES, MAP_SANDBOXED_TASKS,
               MAP_CONFIG, MAP_COUNTERS, MAP_RATE, MAP_GLOBALS, MAP_GPU_MAJORS, MAP_ESCALATION, MAP_ACTIVE,
               MAP_DNS_FORWARDERS, MAP_NAME_ADDRS, MAP_DNS_COUNTERS)

# Bits of the address prefix that come before the address in an LPM key.
LPM_KEY_HEADER_BITS = 64


class Sandbox(ctypes.Structure):
    _fields_ = [
        ("generation", ctypes.c_uint32),
        ("slot", ctypes.c_uint32),
        ("tag", ctypes.c_uint32),
        ("escalate_after", ctypes.c_uint32),
        ("escalate_within_ns", ctypes.c_uint64),
        ("mode", ctypes.c_uint8),
        ("default_verdict", ctypes.c_uint8),
        ("exec_default", ctypes.c_uint8),
        ("gpu", ctypes.c_uint8),
        ("escalate_action", ctypes.c_uint8),
        ("dns", ctypes.c_uint8),
        ("syscall_default", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 1),
    ]


class Escalation(ctypes.Structure):
    _fields_ = [
        ("count", ctypes.c_uint64),
        ("fired", ctypes.c_uint64),
        ("quarantined", ctypes.c_uint64),
        ("times", ctypes.c_uint64 * ESCALATE_MAX),
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


class ExecKey(ctypes.Structure):
    _fields_ = [
        ("generation", ctypes.c_uint32),
        ("dev", ctypes.c_uint32),
        ("ino", ctypes.c_uint64),
    ]


class PathKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("generation_be", ctypes.c_uint32),
        ("path", ctypes.c_char * PATH_MAX),
    ]


class ExecArgs(ctypes.Structure):
    _fields_ = [
        ("argc", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
        ("truncated", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 7),
        ("comm", ctypes.c_char * 16),
        ("buf", ctypes.c_char * (2 * ARGV_BYTES)),
    ]


class Config(ctypes.Structure):
    _fields_ = [
        ("levels_mask", ctypes.c_uint64),
        ("events_per_sec", ctypes.c_uint64),
        ("daemon_tgid", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
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


class EventHead(ctypes.Structure):
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
        ("_pad", ctypes.c_uint8 * 2),
        ("tag", ctypes.c_uint32),
    ]


class NetEvent(ctypes.Structure):
    _fields_ = [
        ("head", EventHead),
        ("family", ctypes.c_uint8),
        ("sock_type", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("protocol", ctypes.c_uint16),
        ("_pad", ctypes.c_uint16),
        ("addr", ctypes.c_uint8 * 16),
    ]


class ExecEvent(ctypes.Structure):
    _fields_ = [
        ("head", EventHead),
        ("ppid", ctypes.c_uint32),
        ("reason", ctypes.c_uint8),
        ("script", ctypes.c_uint8),
        ("argv_truncated", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8),
        ("argc", ctypes.c_uint32),
        ("argv_len", ctypes.c_uint32),
        ("dev", ctypes.c_uint32),
        ("_pad2", ctypes.c_uint32),
        ("ino", ctypes.c_uint64),
        ("path", ctypes.c_char * EVENT_PATH),
        ("argv", ctypes.c_char * ARGV_BYTES),
    ]


class EscalationEvent(ctypes.Structure):
    _fields_ = [
        ("head", EventHead),
        ("count", ctypes.c_uint64),
        ("within_ns", ctypes.c_uint64),
        ("after", ctypes.c_uint32),
        ("escalate_action", ctypes.c_uint8),
        ("acted", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 2),
    ]


class DeviceEvent(ctypes.Structure):
    _fields_ = [
        ("head", EventHead),
        ("major", ctypes.c_uint32),
        ("minor", ctypes.c_uint32),
        ("access", ctypes.c_uint32),
        ("dev_type", ctypes.c_uint32),
    ]


class SyscallKey(ctypes.Structure):
    _fields_ = [
        ("generation", ctypes.c_uint32),
        ("nr", ctypes.c_uint32),
    ]


class SyscallEvent(ctypes.Structure):
    _fields_ = [
        ("head", EventHead),
        ("nr", ctypes.c_uint32),
        ("lsm", ctypes.c_uint8),
        ("compat", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 2),
        ("args", ctypes.c_uint64 * SYSCALL_ARGS),
    ]


class Tracked(ctypes.Structure):
    _fields_ = [
        ("sandbox_cgroup_id", ctypes.c_uint64),
        ("level", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class EscapeEvent(ctypes.Structure):
    _fields_ = [
        ("head", EventHead),
        ("dst_cgroup_id", ctypes.c_uint64),
        ("moved_tgid", ctypes.c_uint32),
        ("how", ctypes.c_uint8),
        ("writer_killed", ctypes.c_uint8),
        ("moved_is_writer", ctypes.c_uint8),
        ("lsm", ctypes.c_uint8),
        ("signal", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class FwdKey(ctypes.Structure):
    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("netns_cookie", ctypes.c_uint64),
    ]


class Forwarder(ctypes.Structure):
    _fields_ = [
        ("udp4", ctypes.c_uint16),
        ("tcp4", ctypes.c_uint16),
        ("udp6", ctypes.c_uint16),
        ("tcp6", ctypes.c_uint16),
    ]


class DnsOrigin(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_uint8 * 16),
        ("port_be", ctypes.c_uint16),
        ("fwd_port_be", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 3),
    ]


class NameKey(ctypes.Structure):
    _fields_ = [
        ("generation", ctypes.c_uint32),
        ("family", ctypes.c_uint32),
        ("addr", ctypes.c_uint8 * 16),
    ]


class NameGrant(ctypes.Structure):
    _fields_ = [
        ("expires_ns", ctypes.c_uint64),
        ("first", ctypes.c_uint16),
        ("last", ctypes.c_uint16),
        ("protocol", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 3),
    ]


class NameGrants(ctypes.Structure):
    _fields_ = [
        ("count", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("grants", NameGrant * MAX_NAME_GRANTS),
    ]


class DnsCounters(ctypes.Structure):
    _fields_ = [
        ("refused", ctypes.c_uint64),
        ("audited", ctypes.c_uint64),
        ("suppressed", ctypes.c_uint64),
        ("lost", ctypes.c_uint64),
    ]


MAX_EVENT_SIZE = max(ctypes.sizeof(t) for t in (NetEvent, ExecEvent, DeviceEvent, EscalationEvent, SyscallEvent,
                                                 EscapeEvent))

# (map name in bpf/*.c, which side of it, mirror) for the layout test.
MAP_LAYOUTS: list[tuple[str, str, type[ctypes.Structure]]] = [
    (MAP_SANDBOXES, "Leaf", Sandbox),
    (MAP_RULES, "Key", LpmKey),
    (MAP_RULES, "Leaf", RuleSet),
    (MAP_EXEC_IDS, "Key", ExecKey),
    (MAP_EXEC_PATHS, "Key", PathKey),
    ("exec_args", "Leaf", ExecArgs),
    (MAP_CONFIG, "Leaf", Config),
    (MAP_COUNTERS, "Leaf", Counters),
    (MAP_RATE, "Leaf", Rate),
    ("net_event_layout", "Leaf", NetEvent),
    ("exec_event_layout", "Leaf", ExecEvent),
    ("device_event_layout", "Leaf", DeviceEvent),
    ("escalation_event_layout", "Leaf", EscalationEvent),
    ("syscall_event_layout", "Leaf", SyscallEvent),
    (MAP_SYSCALL_RULES, "Key", SyscallKey),
    ("escape_event_layout", "Leaf", EscapeEvent),
    (MAP_SANDBOXED_TASKS, "Leaf", Tracked),
    (MAP_ESCALATION, "Leaf", Escalation),
    (MAP_DNS_FORWARDERS, "Key", FwdKey),
    (MAP_DNS_FORWARDERS, "Leaf", Forwarder),
    ("dns_sockets", "Leaf", DnsOrigin),
    (MAP_NAME_ADDRS, "Key", NameKey),
    (MAP_NAME_ADDRS, "Leaf", NameGrants),
    (MAP_DNS_COUNTERS, "Leaf", DnsCounters),
]


def key_generation(map_name: str, key: bytes) -> int:
    """The generation a rule map key belongs to (the LPM keys carry it big-endian,
    right after the prefix length, so that it is part of the matched prefix)."""
    if map_name in (MAP_EXEC_IDS, MAP_NAME_ADDRS, MAP_SYSCALL_RULES):
        mirror = {MAP_EXEC_IDS: ExecKey, MAP_NAME_ADDRS: NameKey, MAP_SYSCALL_RULES: SyscallKey}[map_name]
        offset = mirror.generation.offset
        return int.from_bytes(key[offset:offset + 4], "little")
    offset = (LpmKey if map_name == MAP_RULES else PathKey).generation_be.offset
    return int.from_bytes(key[offset:offset + 4], "big")
