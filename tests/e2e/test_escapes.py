"""Cgroup escapes end to end: root processes in a real sandbox leave its cgroup
the ways a root agent can (writing a cgroup.procs outside, for itself or a
process of its sandbox; clone3 with CLONE_INTO_CGROUP), and each is reported
and stopped: with BPF-LSM the open of a cgroup.procs outside fails with EPERM
(nothing moves); without, the mover is killed at the move. Moves inside the
sandbox, and moves made by processes outside every sandbox (an orchestrator,
the daemon), are not escapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness.env import patience
from tests.e2e.harness.waits import wait_denials

pytestmark = pytest.mark.kernel

PROBE = Path(__file__).with_name("escape_probe.py")


def run_probe(cgroup: Path, how: str, dest: Path) -> tuple[int, list[dict[str, Any]]]:
    """The probe as a real process in ``cgroup``: (exit status, the JSON lines it printed)."""
    from enforcer.cgroupfs import move_pid

    done = subprocess.run([sys.executable, str(PROBE), how, str(dest)], capture_output=True, text=True,
                          timeout=60, preexec_fn=lambda: move_pid(0, cgroup))
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def escapes(client: Any, sandbox: str, count: int) -> list[Any]:
    from enforcer.v1 import enforcer_pb2 as pb

    return [d for d in wait_denials(client, sandbox, count) if d.kind == pb.DENIAL_KIND_ESCAPE]


def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + patience(timeout)
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def lsm() -> bool:
    """BPF-LSM refuses the open of a cgroup.procs outside (file_open)."""
    from tests.e2e.harness.env import expected_exec_mode

    return expected_exec_mode() == "lsm"


def refused_open(code: int, lines: list[dict[str, Any]]) -> bool:
    """The probe's write failed with EPERM (an exception: exit 1) and it said no more."""
    return code == 1 and len(lines) == 1


@pytest.fixture
def sandbox(client, make_cgroup, sandbox_id):
    """(the sandbox's cgroup, a cgroup outside it), the policy applied in enforce mode."""
    inside, outside = make_cgroup("sandbox"), make_cgroup("outside")
    client.apply({"sandbox": sandbox_id, "target": {"cgroup": str(inside)}, "labels": {"run": "esc"}})
    yield inside, outside
    client.remove(sandbox_id)


def test_moving_itself_out_is_refused_or_killed_at_the_move(client, sandbox, sandbox_id, lsm):
    inside, outside = sandbox
    code, lines = run_probe(inside, "move-self", outside)
    (escape,) = escapes(client, sandbox_id, 1)
    assert escape.process.pid == lines[0]["pid"] and escape.escape.how == "cgroup.procs"
    if lsm:  # the open failed: nothing moved
        assert refused_open(code, lines)
        assert (escape.escape.moved_pid, escape.escape.refused_by_lsm, escape.escape.writer_killed) == (0, True, False)
    else:
        assert code == -9 and lines == [{"pid": lines[0]["pid"]}]  # never printed "moved"
        assert escape.escape.moved_pid == lines[0]["pid"]
        assert (escape.escape.moved_killed_by, escape.escape.writer_killed) == ("kernel", True)
    assert escape.escape.cgroup_path == str(outside) and dict(escape.labels) == {"run": "esc"}
    assert (outside / "cgroup.procs").read_text() == ""
    assert client.stats(sandbox_id).escape.refused == 1


def test_moving_another_process_out_is_refused_or_kills_both(client, sandbox, sandbox_id, lsm):
    inside, outside = sandbox
    code, lines = run_probe(inside, "move-child", outside)
    child = lines[0]["child"]
    (escape,) = escapes(client, sandbox_id, 1)
    if lsm:  # refused at the open: the child never left (and is ended here)
        assert refused_open(code, lines) and escape.escape.refused_by_lsm and escape.escape.moved_pid == 0
        assert child in map(int, (inside / "cgroup.procs").read_text().split())
        os.kill(child, 9)
        return
    assert code == -9 and len(lines) == 1
    assert gone(child)  # the daemon killed it on the event
    assert (escape.process.pid, escape.escape.moved_pid) == (lines[0]["pid"], child)
    assert (escape.escape.moved_killed_by, escape.escape.writer_killed) == ("daemon", True)


def test_a_child_cloned_into_a_cgroup_outside_is_killed(client, sandbox, sandbox_id):
    inside, outside = sandbox
    code, lines = run_probe(inside, "clone-into", outside)
    assert code == -9 and lines == [{"pid": lines[0]["pid"]}]  # killed at the fork
    (escape,) = escapes(client, sandbox_id, 1)
    assert escape.escape.how == "clone_into_cgroup" and escape.escape.moved_killed_by == "daemon"
    assert gone(escape.escape.moved_pid)


def test_moves_inside_the_sandbox_and_by_the_orchestrator_are_not_escapes(client, sandbox, sandbox_id):
    from enforcer.cgroupfs import move_pid

    inside, outside = sandbox
    below = inside / "worker"
    below.mkdir()
    try:
        code, lines = run_probe(inside, "move-self", below)
        assert code == 0 and lines[-1] == {"outcome": "moved"}
        # The orchestrator (this test, outside every sandbox) moves a sandboxed process out and back.
        sleeper = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: move_pid(0, inside))
        try:
            move_pid(sleeper.pid, outside)
            move_pid(sleeper.pid, inside)
            time.sleep(0.3)
            assert sleeper.poll() is None
        finally:
            sleeper.kill()
            sleeper.wait()
        assert escapes(client, sandbox_id, 0) == []
    finally:
        below.rmdir()


def test_a_process_there_before_the_apply_is_held_too(client, make_cgroup, sandbox_id, lsm):
    """The daemon tells the kernel which processes a new sandbox already holds."""
    from enforcer.cgroupfs import move_pid

    inside, outside = make_cgroup("sandbox"), make_cgroup("outside")
    earlier = subprocess.Popen([sys.executable, "-c", "import sys, os; sys.stdin.readline(); "
                                f"open('{outside}/cgroup.procs', 'w').write(str(os.getpid())); print('moved')"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               preexec_fn=lambda: move_pid(0, inside))
    client.apply({"sandbox": sandbox_id, "target": {"cgroup": str(inside)}})
    try:
        out, _ = earlier.communicate("go\n", timeout=60)
        assert earlier.returncode == (1 if lsm else -9) and "moved" not in out
        assert [e.escape.moved_pid for e in escapes(client, sandbox_id, 1)] == [0 if lsm else earlier.pid]
    finally:
        client.remove(sandbox_id)


def test_audit_mode_reports_the_escape_and_lets_it_be(client, make_cgroup, sandbox_id):
    inside, outside = make_cgroup("sandbox"), make_cgroup("outside")
    client.apply({"sandbox": sandbox_id, "target": {"cgroup": str(inside)}, "mode": "audit"})
    try:
        code, lines = run_probe(inside, "move-self", outside)
        assert code == 0 and lines[-1] == {"outcome": "moved"}
        (escape,) = escapes(client, sandbox_id, 1)
        assert escape.action == 2 and escape.escape.moved_killed_by == "" and not escape.escape.writer_killed
    finally:
        client.remove(sandbox_id)


def test_a_signal_to_the_daemon_is_reported_and_stopped(client, sandbox, sandbox_id, daemon):
    """Enforcement outlives the daemon, but a sandbox that goes for it is
    reported: killed at the kill() (tracepoint), or refused with EPERM (BPF-LSM,
    task_kill). SIGCONT, so the daemon lives whatever happens."""
    from enforcer.cgroupfs import move_pid
    from tests.e2e.harness.env import expected_exec_mode

    inside, _ = sandbox
    target = daemon.proc.pid
    script = (f"import os, signal\ntry:\n    os.kill({target}, signal.SIGCONT)\n    print('sent')\n"
              "except PermissionError:\n    print('EPERM')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: move_pid(0, inside))
    lsm = expected_exec_mode() == "lsm"
    assert (done.returncode, done.stdout) == ((0, "EPERM\n") if lsm else (-9, "")), done
    (escape,) = escapes(client, sandbox_id, 1)
    assert (escape.escape.how, escape.escape.moved_pid, escape.escape.signal, escape.escape.refused_by_lsm) == (
        "signal_to_daemon", target, 18, lsm)
    assert escape.escape.writer_killed is not lsm and daemon.proc.poll() is None


def test_after_the_policy_is_removed_a_move_is_nobodys_business(client, make_cgroup, sandbox_id):
    inside, outside = make_cgroup("sandbox"), make_cgroup("outside")
    client.apply({"sandbox": sandbox_id, "target": {"cgroup": str(inside)}})
    client.remove(sandbox_id)
    code, lines = run_probe(inside, "move-self", outside)
    assert code == 0 and lines[-1] == {"outcome": "moved"}
    assert os.path.exists(outside / "cgroup.procs")


def test_processes_the_tracking_table_has_no_room_for_are_counted(client, sandbox, daemon):
    """The table of sandboxed processes (65,536, all sandboxes) filled with
    made-up ones: a process entering the sandbox then is not followed, and
    status says how many were not, instead of nothing."""
    import ctypes

    from enforcer.kernel import layout

    inside, _ = sandbox
    status = client.status()
    pin = Path(status.pin_dir) / f"maps-{status.map_layout}" / "sandboxed_tasks"
    libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
    fd = libbpf.bpf_obj_get(str(pin).encode())
    assert fd >= 0, os.strerror(ctypes.get_errno())
    size = 65536  # ENF_MAX_TRACKED_TASKS
    keys = (ctypes.c_uint32 * size)(*range(0xF0000000, 0xF0000000 + size))  # above any pid_max
    values = (layout.Tracked * size)()
    count = ctypes.c_uint32(size)
    try:
        libbpf.bpf_map_update_batch(fd, keys, values, ctypes.byref(count), None)  # stops when full
        assert count.value > 0
        before = status.processes_untracked
        from enforcer.cgroupfs import move_pid

        entered = subprocess.run([sys.executable, "-c", "pass"], timeout=60,  # moved in: no room to follow it
                                 preexec_fn=lambda: move_pid(0, inside))
        assert entered.returncode == 0
        assert client.status().processes_untracked > before
    finally:
        for key in keys[:count.value]:
            libbpf.bpf_map_delete_elem(fd, ctypes.byref(ctypes.c_uint32(key)))
        os.close(fd)
