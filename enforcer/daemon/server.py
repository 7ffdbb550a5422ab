"""`enforcer daemon`: compile and load the BPF programs once, then serve gRPC
on a Unix socket (and optionally TCP) until SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import stat
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from enforcer.daemon.audit import AuditFile, AuditLogError
from enforcer.daemon.enforcement import Enforcement
from enforcer.daemon.logs import configure
from enforcer.daemon.pipeline import DenialPipeline
from enforcer.daemon.service import EnforcerService
from enforcer.kernel.guard import SandboxGuard, tracefs_ready
from enforcer.settings import DEFAULT_AUDIT_KEEP, DEFAULT_AUDIT_LOG, DEFAULT_AUDIT_MAX_BYTES, MAX_MESSAGE_BYTES
from enforcer.v1 import enforcer_pb2 as pb
from enforcer.v1 import enforcer_pb2_grpc as pb_grpc

log = structlog.get_logger("enforcer.daemon")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Enforcer"].full_name


class StartupError(RuntimeError):
    pass


@dataclass(frozen=True)
class DaemonConfig:
    socket_path: str
    listen: str | None = None       # host:port for TCP, None for Unix socket only
    events_per_sec: int = 2000       # per sandbox per CPU, in the kernel
    retention: int = 65536           # denials kept for new subscribers
    audit_log: str = DEFAULT_AUDIT_LOG
    audit_max_bytes: int = DEFAULT_AUDIT_MAX_BYTES
    audit_keep: int = DEFAULT_AUDIT_KEEP


def _claim_socket(path: Path) -> None:
    """Refuse to start twice on one socket; remove a stale one left by a crash."""
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise StartupError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink()
        log.info("stale_socket_removed", socket=str(path))
        return
    finally:
        probe.close()
    raise StartupError(f"another daemon is already serving on {path}")


def run_daemon(config: DaemonConfig) -> int:
    started = time.monotonic()
    if os.geteuid() != 0:
        raise StartupError("the daemon must run as root (it loads BPF programs)")
    socket_path = Path(config.socket_path)
    _claim_socket(socket_path)
    try:
        audit_log = AuditFile(config.audit_log, config.audit_max_bytes, config.audit_keep)
    except AuditLogError as exc:
        raise StartupError(str(exc)) from exc
    configure(audit=audit_log)
    tracefs_ready()
    guard = SandboxGuard(events_per_sec=config.events_per_sec)
    enforcement = Enforcement(guard)
    pipeline = DenialPipeline(guard, enforcement.store, retention=config.retention, escalations=enforcement)
    pipeline.start()
    # Everything loaded so far lives as long as the daemon: keep it out of the
    # collector, and collect less often, so a large apply is not stalled by a
    # full collection (measured: p99 of a 1,000-rule apply 45 ms -> 16 ms).
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_EnforcerServicer_to_server(EnforcerService(enforcement, pipeline, audit_log), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    old_umask = os.umask(0o077)  # the socket is created 0600, not chmod-ed after a window
    try:
        server.add_insecure_port(f"unix:{socket_path}")
    finally:
        os.umask(old_umask)
    if config.listen and server.add_insecure_port(config.listen) == 0:
        raise StartupError(f"cannot listen on {config.listen}")
    server.start()
    os.chmod(socket_path, 0o600)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "daemon_ready",
        socket=str(socket_path),
        listen=config.listen,
        audit_log=str(audit_log.path),
        pid=os.getpid(),
        startup_seconds=round(time.monotonic() - started, 3),
    )
    stop.wait()

    health_servicer.enter_graceful_shutdown()
    pipeline.stop()
    server.stop(grace=1).wait()
    # Until restart safety lands (pinned programs), enforcement ends with the daemon.
    enforcement.remove_all()
    guard.close()
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    log.info("daemon_stopped", audit_records=audit_log.records, audit_write_failures=audit_log.failures)
    audit_log.close()
    return 0
