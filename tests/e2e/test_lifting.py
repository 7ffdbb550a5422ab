"""Lifting the policy from inside: root in a sandbox tries what would take our
programs off the kernel, with the kernel's own commands.

BPF_PROG_DETACH and BPF_LINK_DETACH need a descriptor from an earlier bpf()
call, and every bpf() of a sandbox is refused (EPERM with BPF-LSM; without
it the caller is killed at the call, which runs). What a racing thread could
still get through on the tracepoint kernel, the daemon puts back on the
refusal's report; pins unlinked from bpffs it pins again within a second, so
that the links outlive the daemon as before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness.daemon import DaemonProcess
from tests.e2e.harness.probes import EPERM
from tests.e2e.harness.waits import wait_until
from tests.e2e.test_syscalls import BPF_PROG_GET_NEXT_ID, CLONE_NEWUTS, call

pytestmark = pytest.mark.kernel

CONNECT = "enf_connect4"


def connect_refused(cgroup: Path) -> bool:
    """A TCP connect from the sandbox to a closed loopback port: refused by the
    policy (EPERM), or by the port (nobody listens)."""
    from enforcer.cgroupfs import move_pid

    code = ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=5)\n"
            "except PermissionError:\n    print('EPERM')\nexcept OSError as e:\n    print(type(e).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: move_pid(0, cgroup))
    return done.stdout.strip() == "EPERM"


def missing_programs(client: Any) -> list[str]:
    return [p.name for p in client.status().programs if p.attached != p.expected]


def build_dir(client: Any) -> Path:
    status = client.status()
    return Path(status.pin_dir) / f"build-{status.build}"


def guard(client: Any, sandbox: str, cgroup: Path, syscalls: dict[str, Any] | None = None) -> None:
    client.apply({"sandbox": sandbox, "target": {"cgroup": str(cgroup)}, "network": {"default": "deny"},
                  **({"syscalls": syscalls} if syscalls else {})})


def test_root_in_a_sandbox_cannot_detach_a_pinned_program(client, make_cgroup, sandbox_id, by_lsm):
    from enforcer.kernel.loader import ATTACH_TYPES

    cgroup = make_cgroup()
    guard(client, sandbox_id, cgroup)
    try:
        tried = call(cgroup, "detach-pinned", str(build_dir(client) / f"prog-{CONNECT}"), str(cgroup),
                     ATTACH_TYPES[CONNECT])
        assert tried == ("killed" if by_lsm == "killed" else {**EPERM, "step": "obj_get"})
        assert missing_programs(client) == [] and connect_refused(cgroup)
    finally:
        client.remove(sandbox_id)


def test_a_detach_that_got_through_is_put_back_on_the_bpf_refusal(client, make_cgroup, sandbox_id, by_lsm, daemon):
    """The race the tracepoint kernel leaves (a second thread's detach between
    the first bpf() call and its caller's death), played by the test: the
    program is detached from outside, then the sandbox's bpf() call is refused
    and reported, and the daemon attaches the program again."""
    from enforcer.kernel.loader import ATTACH_TYPES
    from enforcer.kernel.pins import PinDir

    cgroup = make_cgroup()
    guard(client, sandbox_id, cgroup)
    try:
        bpf = PinDir(Path(client.status().pin_dir)).bpf
        prog_fd = bpf.get(build_dir(client) / f"prog-{CONNECT}")
        cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            bpf.detach(prog_fd, cgroup_fd, ATTACH_TYPES[CONNECT])
        finally:
            os.close(cgroup_fd)
            os.close(prog_fd)
        assert missing_programs(client) == [CONNECT] and not connect_refused(cgroup)
        assert call(cgroup, "bpf", BPF_PROG_GET_NEXT_ID, 0, 0) == by_lsm
        wait_until(lambda: not missing_programs(client), "the program to be attached again")
        assert connect_refused(cgroup)
        assert any(e.get("event") == "programs_reattached" for e in daemon.log_events())
    finally:
        client.remove(sandbox_id)


def test_unlinked_pins_are_pinned_again_and_outlive_the_daemon(tmp_path, make_cgroup):
    """Root in the host's mount namespace unlinks our pins (the syscall link,
    the exec tracepoint's, a map), then the daemon dies: the links would have
    gone with it. The daemon pinned them again first, so the rules hold."""
    from enforcer.cgroupfs import move_pid

    cgroup = make_cgroup()
    proc = DaemonProcess(tmp_path)
    proc.start()
    try:
        with proc.client() as enf:
            guard(enf, "unpin", cgroup, {"deny": ["unshare"]})
            pins = [build_dir(enf) / "link-syscall-unshare", build_dir(enf) / "link-tp-sys_enter_execve",
                    next(Path(enf.status().pin_dir).glob("maps-*")) / "sandboxes"]
        assert all(pin.exists() for pin in pins)
        unlink = subprocess.run([sys.executable, "-c", "import os, sys\nfor p in sys.argv[1:]: os.unlink(p)",
                                 *map(str, pins)], capture_output=True, text=True, timeout=60,
                                preexec_fn=lambda: move_pid(0, cgroup))
        assert unlink.returncode == 0, unlink.stderr  # a file operation: nothing refuses it
        wait_until(lambda: all(pin.exists() for pin in pins), "the pins to be back")
        assert any(e.get("event") == "pins_restored" for e in proc.log_events())
        proc.stop(signal.SIGKILL, keep_enforcing=True)
        assert call(cgroup, "unshare", CLONE_NEWUTS) == "killed"  # the link outlived the daemon
        assert connect_refused(cgroup)
    finally:
        proc.uninstall() if proc.proc and proc.proc.poll() is not None else proc.stop()
