"""Defaults shared by the daemon, the CLI and the client."""

from __future__ import annotations

import os

DEFAULT_SOCKET = "/run/enforcer/enforcer.sock"
SOCKET_ENV = "ENFORCER_SOCKET"
# Largest gRPC message either side accepts (the largest policy, 100,000 rules, is a few MB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def socket_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def grpc_target(address: str) -> str:
    """A socket path, ``unix:...`` or ``host:port`` as a gRPC channel target."""
    if address.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return address
    if address.startswith("/") or address.startswith("."):
        return f"unix:{os.path.abspath(address)}"
    return address

# How a refused exec (and a packet socket) is stopped: enforcer daemon --exec-mode.
EXEC_MODE_LSM = "lsm"               # BPF-LSM hooks refuse with EPERM
EXEC_MODE_TRACEPOINT = "tracepoint"  # tracepoints + SIGKILL
EXEC_MODE_AUTO = "auto"              # lsm where the kernel enables BPF-LSM and it loads, else tracepoint
EXEC_MODES = (EXEC_MODE_AUTO, EXEC_MODE_LSM, EXEC_MODE_TRACEPOINT)

# The daemon's audit log (enforcer daemon --audit-log/--audit-max-bytes/--audit-keep).
DEFAULT_AUDIT_LOG = "/var/log/enforcer/audit.jsonl"
DEFAULT_AUDIT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_AUDIT_KEEP = 10

# What outlives the daemon: the policy store on disk, and the pinned BPF state
# (a directory in the bpffs mount, /sys/fs/bpf on most hosts).
DEFAULT_STATE_DIR = "/var/lib/enforcer"
# Where `enforcer oci-hook` looks up the policy a container names (enforcer.oci).
DEFAULT_POLICY_DIR = "/etc/enforcer/policies"
DEFAULT_PIN_NAME = "enforcer"
