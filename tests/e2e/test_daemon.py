"""The daemon as a process: start-up checks, socket, shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import HOST4, DaemonProcess, Probe
from tests.e2e.test_network import connect, policy


@pytest.fixture
def own_daemon(tmp_path: Path):
    proc = DaemonProcess(tmp_path)
    proc.start()
    yield proc
    if proc.proc and proc.proc.poll() is None:
        proc.stop()


def test_socket_is_private_and_a_second_daemon_is_refused(own_daemon: DaemonProcess):
    mode = os.stat(own_daemon.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    second = subprocess.run([sys.executable, "-m", "enforcer.cli", "daemon", "--socket", own_daemon.socket],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert "already serving" in second.stderr
    assert own_daemon.client().health() == "SERVING"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_shutdown_removes_socket_and_keeps_enforcing(own_daemon: DaemonProcess, make_cgroup, sandbox_id,
                                                           probe: Probe, sig: int):
    cg = make_cgroup()
    with own_daemon.client() as enf:
        enf.apply(policy(sandbox_id, cg))
    assert probe(cg, connect(HOST4, 443)) == ["EPERM"]
    assert own_daemon.stop(sig, keep_enforcing=True) == 0
    assert not Path(own_daemon.socket).exists()
    log = own_daemon.log_text()
    assert "Traceback" not in log
    events = [json.loads(line)["event"] for line in log.splitlines()]
    assert "daemon_ready" in events and events[-1] == "daemon_stopped"
    # The programs stay pinned and attached: a service restart opens no door.
    assert probe(cg, connect(HOST4, 443)) == ["EPERM"]
    own_daemon.uninstall()  # what ends enforcement
    assert probe(cg, connect(HOST4, 443)) == ["ECONNREFUSED"]


def test_stale_socket_is_replaced(tmp_path: Path):
    path = tmp_path / "enforcer.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # bound, never listening: what a crashed daemon leaves
    proc = DaemonProcess(tmp_path)
    proc.start()
    try:
        assert any(e["event"] == "stale_socket_removed" for e in proc.log_events())
        ready = next(e for e in proc.log_events() if e["event"] == "daemon_ready")
        assert ready["startup_seconds"] > 0
    finally:
        assert proc.stop() == 0


def test_non_root_is_refused_with_one_sentence(tmp_path: Path):
    tmp_path.chmod(0o777)
    result = subprocess.run(
        [sys.executable, "-m", "enforcer.cli", "daemon", "--socket", str(tmp_path / "s.sock")],
        capture_output=True, text=True, timeout=30,
        preexec_fn=lambda: os.setuid(65534),
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "enforcer daemon: the daemon must run as root (it loads BPF programs)"


def test_print_bpf_shows_the_generated_c():
    result = subprocess.run([sys.executable, "-m", "enforcer.cli", "daemon", "--print-bpf"],
                            capture_output=True, text=True, timeout=30, check=True)
    assert "int enf_connect4(struct bpf_sock_addr *ctx)" in result.stdout
    assert "struct enf_event_head {" in result.stdout  # the shared header is inlined
    assert "#define ENF_OFF_BPRM_FILE " in result.stdout  # BTF offsets of internal fields


def test_optional_tcp_listener(tmp_path: Path):
    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = DaemonProcess(tmp_path, "--listen", f"127.0.0.1:{port}")
    proc.start()
    try:
        from enforcer.client import Enforcer

        with Enforcer(f"127.0.0.1:{port}") as enf:
            assert enf.health() == "SERVING"
            assert enf.list() == []
    finally:
        assert proc.stop() == 0


def test_events_the_ring_buffer_cannot_take_are_counted_not_lost(tmp_path: Path, make_cgroup, sandbox_id,
                                                                  probe: Probe):
    """Stop the daemon (SIGSTOP) so nothing drains the 4 MiB ring buffer, refuse
    more than it holds, resume: every refusal is either delivered or counted as
    lost, and the counters are exact."""
    from tests.e2e.conftest import wait_denials
    from tests.e2e.test_network import sendto

    proc = DaemonProcess(tmp_path, "--events-per-sec", "0")  # no budget: every refusal wants an event
    proc.start()
    total = 70_000  # a 4 MiB ring buffer holds ~47,000 80-byte network events (8-byte record headers)
    try:
        with proc.client() as enf:
            cg = make_cgroup()
            enf.apply(policy(sandbox_id, cg))
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGSTOP)
            try:
                assert probe(cg, {**sendto(HOST4, 9), "repeat": total}) == [f"EPERM*{total}"]
            finally:
                proc.proc.send_signal(signal.SIGCONT)
            stats = enf.stats(sandbox_id)
            assert stats.sendmsg.refused == total
            assert stats.events_suppressed == 0
            assert 0 < stats.events_lost < total
            delivered = wait_denials(enf, sandbox_id, total - stats.events_lost, timeout=30)
            assert len(delivered) + stats.events_lost == total
    finally:
        assert proc.stop() == 0
