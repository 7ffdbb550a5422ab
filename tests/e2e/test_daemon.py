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

from tests.e2e.harness.daemon import DaemonProcess
from tests.e2e.harness.network import HOST4
from tests.e2e.harness.probes import Probe
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
@pytest.mark.kernel
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


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, by openssl."""
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key", "client",
                                                           "client-key", "other-ca", "other-ca-key", "stranger",
                                                           "stranger-key")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", f"/CN=test {ca}", "-keyout", str(files[f"{ca}-key"]), "-out", str(files[ca]))
    for name, ca, extension in (("server", "ca", "subjectAltName=IP:127.0.0.1"),
                                ("client", "ca", "extendedKeyUsage=clientAuth"),
                                ("stranger", "other-ca", "extendedKeyUsage=clientAuth")):
        csr = directory / f"{name}.csr"
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(files[f"{name}-key"]), "-out", str(csr))
        ext = directory / f"{name}.ext"
        ext.write_text(extension + "\n")
        run("x509", "-req", "-in", str(csr), "-CA", str(files[ca]), "-CAkey", str(files[f"{ca}-key"]),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(files[name]))
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_is_refused_without_tls(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "enforcer.cli", "daemon", "--socket", str(tmp_path / "s.sock"),
                             "--listen", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "--listen serves gRPC over TCP only with TLS" in result.stderr


def test_tcp_listener_with_tls_and_client_certificates(tmp_path: Path):
    from enforcer.client import Enforcer, EnforcerError, TlsFiles

    pki = make_pki(tmp_path)
    port = free_port()
    proc = DaemonProcess(tmp_path, "--listen", f"127.0.0.1:{port}", "--tls-cert", str(pki["server"]),
                         "--tls-key", str(pki["server-key"]), "--tls-client-ca", str(pki["ca"]))
    proc.start()
    address = f"127.0.0.1:{port}"
    try:
        with Enforcer(address, tls=TlsFiles(str(pki["ca"]), str(pki["client"]), str(pki["client-key"]))) as enf:
            assert enf.health() == "SERVING"
            assert enf.list() == []
        for refused in (TlsFiles(str(pki["ca"])),  # no client certificate
                        TlsFiles(str(pki["ca"]), str(pki["stranger"]), str(pki["stranger-key"])),  # another CA's
                        TlsFiles(str(pki["other-ca"]), str(pki["client"]), str(pki["client-key"]))):  # server unknown
            with Enforcer(address, timeout=3, tls=refused) as enf, pytest.raises(EnforcerError) as error:
                enf.list()
            assert error.value.code.name == "UNAVAILABLE"
        with Enforcer(address, timeout=3) as enf, pytest.raises(EnforcerError):  # plaintext
            enf.list()
        # The CLI, as an operator elsewhere would use it.
        cli = subprocess.run([sys.executable, "-m", "enforcer.cli", "--socket", address, "--tls-ca", str(pki["ca"]),
                              "--tls-cert", str(pki["client"]), "--tls-key", str(pki["client-key"]), "list"],
                             capture_output=True, text=True, timeout=30)
        assert cli.returncode == 0, cli.stderr
    finally:
        assert proc.stop() == 0


def test_socket_group_makes_the_socket_0660(tmp_path: Path):
    import grp

    group = grp.getgrgid(os.getgid() if os.getgid() != 0 else 65534 if _has_gid(65534) else 0)
    proc = DaemonProcess(tmp_path, "--socket-group", group.gr_name)
    proc.start()
    try:
        info = os.stat(proc.socket)
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == group.gr_gid and info.st_uid == 0
    finally:
        assert proc.stop() == 0
    bad = subprocess.run([sys.executable, "-m", "enforcer.cli", "daemon", "--socket", str(tmp_path / "x.sock"),
                          "--socket-group", "no-such-group-here"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--socket-group: no group named 'no-such-group-here'" in bad.stderr


def _has_gid(gid: int) -> bool:
    import grp

    try:
        grp.getgrgid(gid)
        return True
    except KeyError:
        return False


def test_a_message_over_the_limit_is_refused_and_changes_nothing(tmp_path: Path, make_cgroup, sandbox_id):
    from enforcer.client import Enforcer, EnforcerError

    proc = DaemonProcess(tmp_path, "--max-message-bytes", "4096")
    proc.start()
    try:
        cg = make_cgroup()
        big = policy(sandbox_id, cg, allow=[{"to": f"10.{i // 256}.{i % 256}.0/24", "ports": [443]}
                                            for i in range(400)])
        with Enforcer(proc.socket) as enf:
            with pytest.raises(EnforcerError) as error:
                enf.apply(big)
            assert error.value.code.name == "RESOURCE_EXHAUSTED"
            assert enf.list() == []
            enf.apply(policy(sandbox_id, cg))  # a small one still goes through
    finally:
        assert proc.stop() == 0


@pytest.mark.kernel
def test_events_the_ring_buffer_cannot_take_are_counted_not_lost(tmp_path: Path, make_cgroup, sandbox_id,
                                                                  probe: Probe):
    """Stop the daemon (SIGSTOP) so nothing drains the 4 MiB ring buffer, refuse
    more than it holds, resume: every refusal is either delivered or counted as
    lost, and the counters are exact."""
    from tests.e2e.harness.waits import wait_denials
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


@pytest.mark.kernel
def test_status_reports_what_the_kernel_has_attached(own_daemon: DaemonProcess, make_cgroup, sandbox_id):
    """A program detached behind the daemon's back shows as MISSING, and the
    command fails: status asks the kernel, it does not repeat the daemon's belief."""
    from enforcer.kernel.loader import ATTACH_TYPES
    from enforcer.kernel.pins import PinDir

    cg = make_cgroup()
    with own_daemon.client() as enf:
        enf.apply(policy(sandbox_id, cg))
        build = int(enf.status().build, 16)
    ok = subprocess.run([sys.executable, "-m", "enforcer.cli", "--socket", own_daemon.socket, "status"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "MISSING" not in ok.stdout
    assert "enf_connect4                 cgroup          1/1 sandboxes" in ok.stdout
    pins = PinDir(own_daemon.pin_dir)
    programs = pins.programs(build)
    cgroup_fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
    try:
        pins.bpf.detach(programs["enf_connect4"], cgroup_fd, ATTACH_TYPES["enf_connect4"])
    finally:
        os.close(cgroup_fd)
        for fd in programs.values():
            os.close(fd)
    bad = subprocess.run([sys.executable, "-m", "enforcer.cli", "--socket", own_daemon.socket, "status"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1
    assert "enf_connect4                 cgroup          0/1 sandboxes  MISSING" in bad.stdout
