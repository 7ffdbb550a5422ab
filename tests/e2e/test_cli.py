"""The `enforcer` command against the real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml


def cli(daemon, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "enforcer.cli", "--socket", daemon.socket, *args],
                          capture_output=True, text=True, timeout=60, check=check)


def write_policy(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def test_apply_list_stats_denials_remove(daemon, make_cgroup, sandbox_id, tmp_path, probe):
    from tests.e2e.harness.network import HOST4
    from tests.e2e.harness.waits import wait_denials
    from tests.e2e.test_network import connect, policy

    cg = make_cgroup()
    file = write_policy(tmp_path / "p.yaml", policy(sandbox_id, cg, allow=[{"to": HOST4, "ports": [443]}]))
    out = cli(daemon, "apply", str(file), check=True).stdout
    assert f"applied policy for sandbox {sandbox_id} on {cg}" in out
    assert "replaced policy" in cli(daemon, "apply", str(file), check=True).stdout
    assert sandbox_id in cli(daemon, "list", check=True).stdout
    probe(cg, connect(HOST4, 22))
    with daemon.client() as enf:
        wait_denials(enf, sandbox_id, 1)
    stats = json.loads(cli(daemon, "stats", sandbox_id, "--json", check=True).stdout)
    assert stats["connect"]["refused"] == "1"  # proto3 JSON writes uint64 as a string
    human = cli(daemon, "denials", "--sandbox", sandbox_id, check=True).stdout
    assert f"{sandbox_id} refused connect {HOST4}:22/tcp" in human and "episode=17" in human
    lines = cli(daemon, "denials", "--sandbox", sandbox_id, "--json", check=True).stdout.splitlines()
    assert json.loads(lines[0])["destination"]["port"] == 22
    assert cli(daemon, "remove", sandbox_id, check=True).returncode == 0
    missing = cli(daemon, "remove", sandbox_id)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_bad_policy_file_names_the_field(daemon, tmp_path):
    file = write_policy(tmp_path / "bad.yaml", {"sandbox": "x", "target": {"cgroup": "/x"},
                                                "network": {"allow": [{"to": "10.0.0.1", "ports": [0]}]}})
    result = cli(daemon, "apply", str(file))
    assert result.returncode == 2
    assert "network.allow[0].ports[0]: port 0 is out of range" in result.stderr
    unknown = write_policy(tmp_path / "u.yaml", {"sandbox": "x", "target": {"cgroup": "/x"}, "netwrok": {}})
    assert "netwrok: unknown field" in cli(daemon, "apply", str(unknown)).stderr


def test_run_passes_exit_code_and_summarises(daemon, tmp_path):
    from enforcer.cgroupfs import cgroup2_mount

    doc = {"sandbox": "cli-run", "labels": {"run": "t"},
           "network": {"default": "deny", "allow": [{"to": "127.0.0.1", "ports": [9]}]}}
    file = write_policy(tmp_path / "run.yaml", doc)
    script = (
        "import socket, sys\n"
        "for port in (9, 22, 23):\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "    try: s.sendto(b'x', ('127.0.0.1', port))\n"
        "    except PermissionError: print('refused', port)\n"
        "sys.exit(7)\n"
    )
    result = cli(daemon, "run", "--policy", str(file), "--", sys.executable, "-c", script)
    assert result.returncode == 7
    assert result.stdout.split("\n")[:2] == ["refused 22", "refused 23"]
    assert "enforcer: sandbox cli-run: 2 refused (sendmsg 2), 0 audited" in result.stderr
    assert "cli-run" not in cli(daemon, "list", check=True).stdout
    assert not list((cgroup2_mount() / "enforcer-run").glob("cli-run-*"))
    echoed = cli(daemon, "run", "--policy", str(file), "--", "echo", "a", "--", "b")
    assert echoed.stdout == "a -- b\n"  # only the separator before the command is consumed
    killed = cli(daemon, "run", "--policy", str(file), "--", "sh", "-c", "kill -TERM $$")
    assert killed.returncode == 128 + 15


def test_run_warns_about_root_and_drops_to_a_user(daemon, tmp_path):
    file = write_policy(tmp_path / "run.yaml", {"sandbox": "cli-run-user"})
    as_root = cli(daemon, "run", "--policy", str(file), "--", "id", "-u")
    assert as_root.stdout == "0\n" and "runs as root with the host's cgroup namespace" in as_root.stderr
    as_nobody = cli(daemon, "run", "--policy", str(file), "--user", "nobody", "--", "sh", "-c", "id -u; id -G")
    assert as_nobody.returncode == 0 and "runs as root" not in as_nobody.stderr
    uid, groups = as_nobody.stdout.splitlines()
    assert uid != "0" and "0" not in groups.split()  # no root group kept
    bad = cli(daemon, "run", "--policy", str(file), "--user", "no-such-user-here", "--", "true")
    assert bad.returncode == 2 and "enforcer run: --user: no user 'no-such-user-here'" in bad.stderr


def test_unreachable_daemon_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "enforcer.cli", "--socket", str(tmp_path / "none.sock"), "list"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"enforcer: cannot reach the daemon at unix:{tmp_path / 'none.sock'} (is `enforcer daemon` running there?)")


def test_status_and_exec_denials_in_human_form(daemon, make_cgroup, sandbox_id, tmp_path):
    from tests.e2e.harness.env import expected_exec_mode
    from tests.e2e.harness.waits import wait_denials
    from tests.e2e.test_exec import PY, TRUE, outcome

    status = cli(daemon, "status", check=True).stdout
    assert status.startswith("exec enforcement: BPF-LSM (exec and packet sockets refused with EPERM)\n"
                             if expected_exec_mode() == "lsm" else
                             "exec enforcement: tracepoints (process killed before a refused program runs or a packet "
                             "socket is made)\n")
    assert "gpu device majors: " in status and "195" in status
    assert f"audit log: {daemon.audit_path} (" in status and " 0 failed)" in status
    cg = make_cgroup()
    file = write_policy(tmp_path / "p.yaml", {"sandbox": sandbox_id, "target": {"cgroup": str(cg)},
                                              "exec": {"allow": [PY]}})
    cli(daemon, "apply", str(file), check=True)
    assert "exec(allow=1 deny=0)" in cli(daemon, "list", check=True).stdout
    outcome(cg, "spawn", TRUE, "--flag")
    with daemon.client() as enf:
        wait_denials(enf, sandbox_id, 1)
    human = cli(daemon, "denials", "--sandbox", sandbox_id, check=True).stdout
    assert f'{sandbox_id} refused exec {TRUE} (not_allowed) argv=["{TRUE}", "--flag"] ppid=' in human
    assert "exec     refused        1" in cli(daemon, "stats", sandbox_id, check=True).stdout
