"""contrib/enforcer.service starts the daemon with flags the CLI has."""

from __future__ import annotations

import shlex
from pathlib import Path

from enforcer.cli import build_parser
from enforcer.settings import DEFAULT_AUDIT_LOG, DEFAULT_SOCKET, DEFAULT_STATE_DIR

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "enforcer.service"


def unit_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    text = UNIT.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_exec_start_parses_as_a_daemon_command():
    argv = shlex.split(unit_settings()["ExecStart"])
    assert argv[0].endswith("/enforcer")
    args = build_parser().parse_args(argv[1:])
    assert args.command_name == "daemon" and not args.uninstall
    assert (args.socket, args.state_dir, args.audit_log) == (DEFAULT_SOCKET, DEFAULT_STATE_DIR, DEFAULT_AUDIT_LOG)


def test_directories_match_the_defaults():
    settings = unit_settings()
    assert f"/run/{settings['RuntimeDirectory']}" == str(Path(DEFAULT_SOCKET).parent)
    assert f"/var/lib/{settings['StateDirectory']}" == DEFAULT_STATE_DIR
    assert f"/var/log/{settings['LogsDirectory']}" == str(Path(DEFAULT_AUDIT_LOG).parent)
    assert settings["KillSignal"] == "SIGTERM" and settings["Restart"] == "always"
    assert "PrivateTmp" not in settings  # exec rules must see the host's /tmp


def test_systemd_accepts_the_unit(tmp_path):
    import shutil
    import subprocess
    import sys

    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (package systemd) is needed to check the unit"
    enforcer = Path(sys.executable).with_name("enforcer")
    unit = tmp_path / "enforcer.service"
    unit.write_text(UNIT.read_text().replace("/opt/enforcer/.venv/bin/enforcer", str(enforcer)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "enforcer.service" not in done.stderr, done.stderr
