"""The denial kinds, one entry each: how the kernel names a kind, its proto
enum and detail field, whether it has exact counters, its audit-log fields, its
line in `enforcer denials`, its OCSF class and sentence, its CSV columns and its
default reward penalty. The pipeline, the CLI, the export, the metrics, the
stats and the RL adapter look a kind up here, so a new kind is one entry (plus
its kernel event and decoder, in bpf/enforcer.h and enforcer/kernel/events.py).

Wire types only (the proto's), so that every layer may import it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from enforcer.v1 import enforcer_pb2 as pb
from enforcer.wire import PROTOCOL_NAMES

Record = dict[str, Any]  # one audit-log record, as written and as export reads it

# IP protocol numbers as the audit log writes them (the pipeline maps the
# kernel's back through this too), and their OCSF names.
PROTOCOL_NUMBERS = {pb.PROTOCOL_TCP: 6, pb.PROTOCOL_UDP: 17}
_OCSF_PROTOCOL_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp"}


@dataclass(frozen=True)
class Ocsf:
    """The class-specific part of an OCSF event, and what goes in `unmapped`."""
    fields: dict[str, Any]
    unmapped: dict[str, Any]


@dataclass(frozen=True)
class Kind:
    name: str               # short name: stats field, `--kind`, metrics label, rl rule
    proto: pb.DenialKind    # its wire enum value
    kernel_macro: str       # ENF_KIND_* in bpf/enforcer.h
    detail: str             # the DenialEvent field holding its detail
    counted: bool           # exact per-sandbox counters (a SandboxStats field named `name`)
    audit: Callable[[pb.DenialEvent], Record]      # the kind's fields in its audit record
    text: Callable[[pb.DenialEvent], str]          # what `enforcer denials` prints after the kind
    message: Callable[[Record, str], str]          # OCSF message, given the verb (refused/audited)
    ocsf: Callable[[Record, bool, dict[str, Any], str], Ocsf]  # (record, refused, actor process, host)
    csv_columns: tuple[str, ...]
    penalty: float          # rl default: per denial
    drop_after: int | None  # rl default: drop the trajectory at this many


def _protocol(number: object) -> dict[str, Any]:
    if not isinstance(number, int) or number <= 0:
        return {}
    name = _OCSF_PROTOCOL_NAMES.get(number)
    return {"protocol_num": number, **({"protocol_name": name} if name else {})}


def _outbound(record: Record) -> dict[str, Any]:
    return {"direction_id": 2, "direction": "Outbound", **_protocol(record.get("protocol"))}


def _network_activity(activity_id: int, activity: str) -> Callable[[Record, bool, dict[str, Any], str], Ocsf]:
    def render(record: Record, refused: bool, actor: dict[str, Any], host: str) -> Ocsf:
        # Network Activity 1.3.0 has no actor: the process goes in unmapped.
        endpoint = ({"ip": record["address"], "port": int(record.get("port", 0))} if record.get("address")
                    else {"hostname": host})
        return Ocsf({"category_uid": 4, "category_name": "Network Activity", "class_uid": 4001,
                     "class_name": "Network Activity", "activity_id": activity_id, "activity_name": activity,
                     "type_uid": 400100 + activity_id, "type_name": f"Network Activity: {activity}",
                     "dst_endpoint": endpoint, "connection_info": _outbound(record)},
                    {"pid": actor["pid"], "comm": actor["name"]})
    return render


def _process_activity(record: Record, host: str, activity_id: int, activity: str, actor: dict[str, Any],
                      process: dict[str, Any], unmapped: dict[str, Any] | None = None) -> Ocsf:
    return Ocsf({"category_uid": 1, "category_name": "System Activity", "class_uid": 1007,
                 "class_name": "Process Activity", "activity_id": activity_id, "activity_name": activity,
                 "type_uid": 100700 + activity_id, "type_name": f"Process Activity: {activity}",
                 "actor": {"process": actor}, "process": process,
                 "device": {"hostname": host, "type_id": 0, "type": "Unknown"}},
                unmapped or {})


# ---- network ------------------------------------------------------------------

def _destination_audit(event: pb.DenialEvent) -> Record:
    return {"address": event.destination.address, "port": event.destination.port,
            "protocol": PROTOCOL_NUMBERS.get(event.destination.protocol, 0)}


def _destination_text(event: pb.DenialEvent) -> str:
    dest = event.destination
    host = f"[{dest.address}]" if ":" in dest.address else dest.address
    return f"{host}:{dest.port}/{PROTOCOL_NAMES.get(dest.protocol, '?')}"


def _destination_message(kind: str) -> Callable[[Record, str], str]:
    return lambda record, verb: (f"{kind} to {record.get('address')}:{record.get('port')} {verb} "
                                 f"in sandbox {record.get('sandbox', '')}")


def _socket_audit(event: pb.DenialEvent) -> Record:
    return {"family": event.socket.family, "type": event.socket.type, "protocol": event.socket.protocol}


def _socket_text(event: pb.DenialEvent) -> str:
    return f"socket(family={event.socket.family}, type={event.socket.type}, protocol={event.socket.protocol})"


# ---- exec, device ---------------------------------------------------------------

def _exec_audit(event: pb.DenialEvent) -> Record:
    return {"ppid": event.process.ppid, "path": event.exec.path, "argv": list(event.exec.argv),
            "reason": pb.ExecReason.Name(event.exec.reason), "script": event.exec.script}


def _exec_text(event: pb.DenialEvent) -> str:
    reason = pb.ExecReason.Name(event.exec.reason).removeprefix("EXEC_REASON_").lower()
    argv = json.dumps(list(event.exec.argv)) + ("..." if event.exec.argv_truncated else "")
    return f"{event.exec.path} ({reason}{', script' if event.exec.script else ''}) argv={argv} ppid={event.process.ppid}"


def _exec_ocsf(record: Record, refused: bool, actor: dict[str, Any], host: str) -> Ocsf:
    path = str(record.get("path", ""))
    process = {"pid": int(record.get("pid", 0)), "name": os.path.basename(path),
               "cmd_line": " ".join(record.get("argv") or []),
               "file": {"name": os.path.basename(path), "path": path, "type_id": 1, "type": "Regular File"}}
    parent = {**actor, **({"pid": int(record["ppid"])} if record.get("ppid") else {})}
    return _process_activity(record, host, 1, "Launch", parent, process)


def _device_audit(event: pb.DenialEvent) -> Record:
    return {"major": event.device.major, "minor": event.device.minor, "access": event.device.access,
            "driver": event.device.driver, "device": event.device.name}


def _device_text(event: pb.DenialEvent) -> str:
    device = event.device
    named = " ".join(filter(None, (device.name, f"({device.driver})" if device.driver else "")))
    return f"{named + ' ' if named else ''}{device.major}:{device.minor} access={device.access}"


def _device_message(record: Record, verb: str) -> str:
    named = " ".join(str(part) for part in (record.get("device"), record.get("driver")) if part)
    return (f"device {named + ' ' if named else ''}{record.get('major')}:{record.get('minor')} "
            f"({record.get('access')}) {verb} in sandbox {record.get('sandbox', '')}")


def _other_process_activity(record: Record, refused: bool, actor: dict[str, Any], host: str) -> Ocsf:
    return _process_activity(record, host, 99, "Other", actor, actor)


# ---- escalation -----------------------------------------------------------------

def _escalation_audit(event: pb.DenialEvent) -> Record:
    return {"escalation": pb.EscalationAction.Name(event.escalation.action), "after": event.escalation.after,
            "within_seconds": event.escalation.within_seconds, "acted": event.escalation.acted}


def _escalation_text(event: pb.DenialEvent) -> str:
    esc = event.escalation
    action = pb.EscalationAction.Name(esc.action).removeprefix("ESCALATION_ACTION_").lower()
    return f"{esc.after} denials within {esc.within_seconds:g}s: {'' if esc.acted else 'would be '}{action}"


def _escalation_ocsf(record: Record, refused: bool, actor: dict[str, Any], host: str) -> Ocsf:
    if record.get("escalation") == "ESCALATION_ACTION_KILL":
        return _process_activity(record, host, 2, "Terminate", actor, actor)
    return _process_activity(record, host, 99, "Other", actor, actor)  # a quarantine or a freeze


# ---- dns ------------------------------------------------------------------------

def _dns_audit(event: pb.DenialEvent) -> Record:
    return {"name": event.dns.name, "query_type": event.dns.query_type, "reason": pb.DnsReason.Name(event.dns.reason),
            "protocol": PROTOCOL_NUMBERS.get(event.dns.transport, 0)}


def _dns_text(event: pb.DenialEvent) -> str:
    reason = pb.DnsReason.Name(event.dns.reason).removeprefix("DNS_REASON_").lower()
    return f"{event.dns.name} {event.dns.query_type}/{PROTOCOL_NAMES.get(event.dns.transport, '?')} ({reason})"


def _dns_ocsf(record: Record, refused: bool, actor: dict[str, Any], host: str) -> Ocsf:
    # DNS Activity: a Query (1); a refused one was answered REFUSED (rcode 5).
    fields = {"category_uid": 4, "category_name": "Network Activity", "class_uid": 4003, "class_name": "DNS Activity",
              "activity_id": 1, "activity_name": "Query", "type_uid": 400301, "type_name": "DNS Activity: Query",
              "query": {"hostname": str(record.get("name", "")), "type": str(record.get("query_type", "")),
                        "class": "IN"},
              "connection_info": _outbound(record)}
    if refused:
        fields.update(rcode_id=5, rcode="Refused")
    return Ocsf(fields, {"pid": actor["pid"], "comm": actor["name"]})


# ---- syscall, escape --------------------------------------------------------------

def _syscall_audit(event: pb.DenialEvent) -> Record:
    return {"syscall": event.syscall.name, "number": event.syscall.number, "args": list(event.syscall.args),
            "refused_by_lsm": event.syscall.refused_by_lsm, "compat": event.syscall.compat}


def _syscall_text(event: pb.DenialEvent) -> str:
    call = event.syscall
    return (f"{call.name or '#' + str(call.number)}({', '.join(hex(a) for a in call.args)})"
            + (" 32-bit" if call.compat else ""))


def _syscall_ocsf(record: Record, refused: bool, actor: dict[str, Any], host: str) -> Ocsf:
    # The refused call, as Process Activity: Other (the caller is killed at the call, or it got EPERM).
    return _process_activity(record, host, 99, "Other", actor, actor, {
        "syscall": record.get("syscall", ""), "number": record.get("number"), "args": record.get("args") or [],
        "refused_by_lsm": bool(record.get("refused_by_lsm")), "compat": bool(record.get("compat"))})


def _escape_audit(event: pb.DenialEvent) -> Record:
    esc = event.escape
    return {"moved_pid": esc.moved_pid, "cgroup": esc.cgroup_path, "how": esc.how,
            "moved_killed_by": esc.moved_killed_by, "writer_killed": esc.writer_killed, "signal": esc.signal,
            "refused_by_lsm": esc.refused_by_lsm}


def _escape_text(event: pb.DenialEvent) -> str:
    esc = event.escape
    if esc.how == "signal_to_daemon":
        return f"signal {esc.signal} to the daemon (pid {esc.moved_pid})"
    killed = f", killed by the {esc.moved_killed_by}" if esc.moved_killed_by else ""
    return f"pid {esc.moved_pid} to {esc.cgroup_path or esc.cgroup_id} via {esc.how}{killed}"


def _escape_message(record: Record, verb: str) -> str:
    sandbox = record.get("sandbox", "")
    if record.get("how") == "signal_to_daemon":
        return f"signal {record.get('signal')} to the enforcer daemon {verb} in sandbox {sandbox}"
    return (f"process {record.get('moved_pid')} left sandbox {sandbox} for cgroup "
            f"{record.get('cgroup') or '?'} ({record.get('how')}), {verb}")


def _escape_ocsf(record: Record, refused: bool, actor: dict[str, Any], host: str) -> Ocsf:
    # The process that left its sandbox's cgroup; the actor made the move.
    return _process_activity(record, host, 99, "Other", actor, {"pid": int(record.get("moved_pid", 0)), "name": ""}, {
        "cgroup": record.get("cgroup", ""), "how": record.get("how", ""),
        "moved_killed_by": record.get("moved_killed_by", "")})


# Network attempts are common mistakes (a wrong mirror, an unlisted name); raw
# sockets, refused programs, GPU access, refused syscalls and escapes are what
# a breakout looks like.
KINDS: tuple[Kind, ...] = (
    Kind("connect", pb.DENIAL_KIND_CONNECT, "ENF_KIND_CONNECT", "destination", True, _destination_audit,
               _destination_text, _destination_message("connect"), _network_activity(1, "Open"),
               ("address", "port"), 0.1, 50),
    Kind("sendmsg", pb.DENIAL_KIND_SENDMSG, "ENF_KIND_SENDMSG", "destination", True, _destination_audit,
               _destination_text, _destination_message("sendmsg"), _network_activity(6, "Traffic"),
               ("address", "port"), 0.1, 50),
    Kind("socket", pb.DENIAL_KIND_SOCKET, "ENF_KIND_SOCKET", "socket", True, _socket_audit, _socket_text,
               lambda record, verb: f"socket creation {verb} in sandbox {record.get('sandbox', '')}",
               _network_activity(99, "Other"), (), 1.0, 1),
    Kind("exec", pb.DENIAL_KIND_EXEC, "ENF_KIND_EXEC", "exec", True, _exec_audit, _exec_text,
               lambda record, verb: f"exec of {record.get('path')} {verb} in sandbox {record.get('sandbox', '')}",
               _exec_ocsf, ("path", "argv", "reason"), 1.0, 1),
    Kind("device", pb.DENIAL_KIND_DEVICE, "ENF_KIND_DEVICE", "device", True, _device_audit, _device_text,
               _device_message, _other_process_activity, ("major", "minor", "access", "driver", "device"), 1.0, 1),
    Kind("escalation", pb.DENIAL_KIND_ESCALATION, "ENF_KIND_ESCALATION", "escalation", False,
               _escalation_audit, _escalation_text,
               lambda record, verb: (f"escalation {record.get('escalation')} after {record.get('after')} denials "
                                     f"in sandbox {record.get('sandbox', '')}"),
               _escalation_ocsf, ("escalation",), 0.0, None),
    Kind("dns", pb.DENIAL_KIND_DNS, "ENF_KIND_DNS", "dns", True, _dns_audit, _dns_text,
               lambda record, verb: (f"DNS query for {record.get('name')} ({record.get('query_type')}) {verb} "
                                     f"in sandbox {record.get('sandbox', '')}"),
               _dns_ocsf, ("name", "query_type", "reason"), 0.1, 50),
    Kind("syscall", pb.DENIAL_KIND_SYSCALL, "ENF_KIND_SYSCALL", "syscall", True, _syscall_audit, _syscall_text,
               lambda record, verb: (f"syscall {record.get('syscall') or record.get('number')} {verb} "
                                     f"in sandbox {record.get('sandbox', '')}"),
               _syscall_ocsf, ("syscall", "number", "args"), 1.0, 1),
    Kind("escape", pb.DENIAL_KIND_ESCAPE, "ENF_KIND_ESCAPE", "escape", True, _escape_audit, _escape_text,
               _escape_message, _escape_ocsf, ("moved_pid", "cgroup", "how", "moved_killed_by"), 1.0, 1),
)
BY_NAME = {kind.name: kind for kind in KINDS}
BY_PROTO = {kind.proto: kind for kind in KINDS}
COUNTED = tuple(kind.name for kind in KINDS if kind.counted)  # the SandboxStats fields, in order
