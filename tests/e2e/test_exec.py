"""Exec allowlists end to end: a real daemon, real sandbox cgroups, real processes
exec'ing real files, and each known way around an exec allowlist.

On a kernel without BPF-LSM a refused exec is killed with SIGKILL after the point
of no return, before the new program's first instruction; with BPF-LSM the exec
fails with EPERM instead. ``refused`` is what this kernel must give
(tests/kernels/features.py), checked against what the daemon reports it uses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.e2e.harness.daemon import DaemonProcess
from tests.e2e.harness.env import REPO, expected_exec_mode
from tests.e2e.harness.waits import wait_denials

pytestmark = pytest.mark.kernel  # the outcome depends on the kernel: runs on each (make test-kernels)

PY = os.path.realpath("/usr/bin/python3")  # the probe's interpreter: every policy here allows it
EXEC_PROBE = Path(__file__).with_name("exec_probe.py")
LOADER = "/lib64/ld-linux-x86-64.so.2"
TRUE = "/usr/bin/true"


def run_in(cgroup: Path | None, argv: list[str], cwd: Path | None = None) -> dict[str, Any]:
    """Run argv as a real process in ``cgroup``: {"outcome": ..., "pid": ...}."""
    from enforcer.cgroupfs import move_pid

    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd,
                                preexec_fn=(lambda: move_pid(0, cgroup)) if cgroup else None)
    except PermissionError:
        return {"outcome": "eperm"}
    if result.returncode == -9:
        return {"outcome": "killed"}
    if result.returncode == 0 and result.stdout.startswith("{"):
        return dict(json.loads(result.stdout.splitlines()[-1]))
    return {"outcome": f"exit:{result.returncode}", "stderr": result.stderr[-300:]}


def probe(cgroup: Path | None, op: str, path: str | Path, *args: str | Path, cwd: Path | None = None) -> dict[str, Any]:
    return run_in(cgroup, [PY, str(EXEC_PROBE), op, str(path), *map(str, args)], cwd=cwd)


def outcome(cgroup: Path | None, op: str, path: str | Path, *args: str | Path, cwd: Path | None = None) -> str:
    return str(probe(cgroup, op, path, *args, cwd=cwd)["outcome"])


REFUSED_BY_MODE = {"tracepoint": "killed", "lsm": "eperm"}


@pytest.fixture(scope="module")
def refused(daemon: Any) -> str:
    """How every refused exec of this module must end on this kernel."""
    with daemon.client() as client:
        mode = client.status().exec_enforcement
    assert mode == expected_exec_mode()
    return REFUSED_BY_MODE[mode]


@pytest.fixture(autouse=True)
def _record_refusal(request: pytest.FixtureRequest, record_property: Callable[[str, object], None]) -> None:
    """For the per-kernel report: how this test's refused execs had to end."""
    if "refused" in request.fixturenames:
        record_property("refused_exec", request.getfixturevalue("refused"))


@pytest.fixture
def bins(tmp_path: Path) -> Path:
    """tmp_path/bin/xmrig: a stand-in miner, a copy of touch, so a run leaves a mark."""
    directory = tmp_path / "bin"
    directory.mkdir()
    shutil.copy2("/usr/bin/touch", directory / "xmrig")
    return directory


ApplyExec = Callable[..., Any]


@pytest.fixture
def apply_exec(client: Any, sandbox_id: str) -> ApplyExec:
    def apply(cgroup: Path, allow: list[str | Path] = (), deny: list[str | Path] = (),  # type: ignore[assignment]
              default: str = "deny", mode: str = "enforce") -> Any:
        return client.apply({
            "sandbox": sandbox_id,
            "target": {"cgroup": str(cgroup)},
            "labels": {"run": "exec-test", "episode": "4"},
            "mode": mode,
            "exec": {"default": default, "allow": [PY, *map(str, allow)], "deny": list(map(str, deny))},
        })

    return apply


def exec_denials(client: Any, sandbox: str, count: int) -> list[Any]:
    from enforcer.v1 import enforcer_pb2 as pb

    return [e for e in wait_denials(client, sandbox, count) if e.kind == pb.DENIAL_KIND_EXEC]


def test_allowed_program_runs_and_others_are_stopped_before_their_first_instruction(
        client, apply_exec, make_cgroup, sandbox_id, bins, tmp_path, refused):
    from enforcer.v1 import enforcer_pb2 as pb

    cgroup = make_cgroup()
    apply_exec(cgroup, allow=[TRUE])
    marker = tmp_path / "mined"
    assert outcome(cgroup, "spawn", TRUE) == "exit:0"
    result = probe(cgroup, "spawn", bins / "xmrig", marker, "--donate-level", "1")
    assert result["outcome"] == refused
    assert not marker.exists()  # touch never ran an instruction

    [event] = exec_denials(client, sandbox_id, 1)
    assert (event.kind, event.action) == (pb.DENIAL_KIND_EXEC, pb.ACTION_REFUSED)
    assert event.sandbox == sandbox_id and dict(event.labels) == {"run": "exec-test", "episode": "4"}
    assert event.exec.path == str(bins / "xmrig")
    assert list(event.exec.argv) == [str(bins / "xmrig"), str(marker), "--donate-level", "1"]
    assert event.exec.reason == pb.EXEC_REASON_NOT_ALLOWED and not event.exec.argv_truncated
    assert event.process.ppid == result["pid"]  # the probe forked the child that exec'd
    assert event.process.comm.startswith("python")  # the caller's name, not the refused program's
    from enforcer.kernel.exec_rules import identity_of

    assert (event.exec.device, event.exec.inode) == identity_of(str(bins / "xmrig"))
    stats = client.stats(sandbox_id)
    assert (stats.exec.refused, stats.exec.audited) == (1, 0)


def test_processes_outside_the_sandbox_are_not_judged(apply_exec, make_cgroup, bins, tmp_path):
    apply_exec(make_cgroup(), allow=[TRUE])
    marker = tmp_path / "outside"
    assert outcome(None, "spawn", bins / "xmrig", marker) == "exit:0"
    assert marker.exists()


def test_audit_mode_reports_and_lets_it_run(client, apply_exec, make_cgroup, sandbox_id, bins, tmp_path):
    from enforcer.v1 import enforcer_pb2 as pb

    cgroup = make_cgroup()
    apply_exec(cgroup, allow=[TRUE], mode="audit")
    marker = tmp_path / "audited"
    assert outcome(cgroup, "spawn", bins / "xmrig", marker) == "exit:0"
    assert marker.exists()
    [event] = exec_denials(client, sandbox_id, 1)
    assert event.action == pb.ACTION_AUDITED
    assert client.stats(sandbox_id).exec.audited == 1


def test_a_copy_is_a_new_file_whatever_its_name(client, apply_exec, make_cgroup, sandbox_id, bins, tmp_path, refused):
    """Bypass: copy or rename. The copy has its own identity, so an allowlist
    entry for /usr/bin/true does not cover a copy of it, nor a miner named true."""
    from enforcer.v1 import enforcer_pb2 as pb

    cgroup = make_cgroup()
    apply_exec(cgroup, allow=[TRUE])
    shutil.copy2(TRUE, tmp_path / "true")
    disguised = tmp_path / "usr" / "bin"
    disguised.mkdir(parents=True)
    shutil.copy2(bins / "xmrig", disguised / "true")
    assert outcome(cgroup, "spawn", tmp_path / "true") == refused
    assert outcome(cgroup, "spawn", disguised / "true", tmp_path / "mark") == refused
    assert not (tmp_path / "mark").exists()
    events = exec_denials(client, sandbox_id, 2)
    assert [e.exec.reason for e in events] == [pb.EXEC_REASON_NOT_ALLOWED] * 2


def test_links_and_dotdot_paths_lead_to_the_refused_identity(client, apply_exec, make_cgroup, sandbox_id, bins, tmp_path,
                                                              refused):
    """Bypasses: symlink, hardlink, '..' components. Deny list under default allow."""
    from enforcer.v1 import enforcer_pb2 as pb

    cgroup = make_cgroup()
    miner = bins / "xmrig"
    apply_exec(cgroup, deny=[miner], default="allow")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "python-helper").symlink_to(miner)
    os.link(miner, elsewhere / "hard")
    dotdot = "/usr/bin/../.." + str(miner)
    for path in (miner, elsewhere / "python-helper", elsewhere / "hard", dotdot):
        assert outcome(cgroup, "spawn", path, tmp_path / "mark") == refused, path
    assert not (tmp_path / "mark").exists()
    assert outcome(cgroup, "spawn", "/usr/bin/../bin/true") == "exit:0"
    events = exec_denials(client, sandbox_id, 4)
    assert [e.exec.reason for e in events] == [pb.EXEC_REASON_DENIED] * 4
    assert events[3].exec.path == dotdot  # reported as the caller passed it

    # What a deny list cannot do: a copy is another file. Use default: deny.
    shutil.copy2(miner, elsewhere / "copy")
    assert outcome(cgroup, "spawn", elsewhere / "copy", tmp_path / "copied") == "exit:0"


def test_directory_entries_cover_files_below_it_and_not_links_out_of_it(
        client, apply_exec, make_cgroup, sandbox_id, bins, tmp_path, refused):
    cgroup = make_cgroup()
    tools = tmp_path / "tools"
    (tools / "sub").mkdir(parents=True)
    shutil.copy2(TRUE, tools / "sub" / "ok")
    (tools / "link").symlink_to(bins / "xmrig")
    (tools / "sub" / "denied").mkdir()
    shutil.copy2(TRUE, tools / "sub" / "denied" / "no")
    apply_exec(cgroup, allow=[f"{tools}/"], deny=[f"{tools}/sub/denied/"])
    assert outcome(cgroup, "spawn", tools / "sub" / "ok") == "exit:0"
    shutil.copy2(TRUE, tools / "sub" / "added-later")  # entries name directories, not their contents
    assert outcome(cgroup, "spawn", tools / "sub" / "added-later") == "exit:0"
    assert outcome(cgroup, "spawn", tools / "link", tmp_path / "mark") == refused
    assert outcome(cgroup, "spawn", TRUE) == refused  # not below tools/
    assert outcome(cgroup, "spawn", tools / "sub" / "denied" / "no") == refused


def test_deny_directory_wins_over_an_allowed_file_below_it(apply_exec, make_cgroup, tmp_path, refused):
    cgroup = make_cgroup()
    jail = tmp_path / "jail"
    jail.mkdir()
    shutil.copy2(TRUE, jail / "t")
    apply_exec(cgroup, allow=[jail / "t"], deny=[f"{jail}/"])
    assert outcome(cgroup, "spawn", jail / "t") == refused


def test_the_dynamic_loader_runs_nothing_unless_named(client, apply_exec, make_cgroup, sandbox_id, bins, tmp_path,
                                                      refused):
    """Bypass: ld-linux-x86-64.so.2 /tmp/x maps and runs any ELF. The loader lives
    under /usr/, which the first policy allows, and is refused all the same."""
    from enforcer.v1 import enforcer_pb2 as pb

    cgroup = make_cgroup()
    apply_exec(cgroup, allow=["/usr/"])
    assert outcome(cgroup, "spawn", TRUE) == "exit:0"
    assert outcome(cgroup, "spawn", LOADER, bins / "xmrig", tmp_path / "mark") == refused
    assert outcome(cgroup, "spawn", LOADER, TRUE) == refused
    assert not (tmp_path / "mark").exists()
    events = exec_denials(client, sandbox_id, 2)
    assert [e.exec.reason for e in events] == [pb.EXEC_REASON_DENIED] * 2
    apply_exec(cgroup, allow=["/usr/", LOADER])
    assert outcome(cgroup, "spawn", LOADER, TRUE) == "exit:0"


def test_unnamed_files_never_run(client, apply_exec, make_cgroup, sandbox_id, bins, refused):
    """Bypass: memfd_create + fexecve / execveat(AT_EMPTY_PATH). A memfd has no
    directory and no name: refused even under default allow."""
    from enforcer.v1 import enforcer_pb2 as pb

    cgroup = make_cgroup()
    apply_exec(cgroup, default="allow")
    assert outcome(cgroup, "memfd", TRUE) == refused
    assert outcome(cgroup, "execveat", TRUE) == "exit:0"  # an fd of a named file: judged by identity
    events = exec_denials(client, sandbox_id, 1)
    assert events[0].exec.reason == pb.EXEC_REASON_UNNAMED
    assert events[0].exec.path.startswith("/dev/fd/")

    apply_exec(cgroup, allow=[TRUE])
    assert outcome(cgroup, "execveat", bins / "xmrig") == refused
    assert outcome(cgroup, "execveat", TRUE) == "exit:0"


def test_scripts_are_judged_by_their_path_and_interpreters_by_identity(
        client, apply_exec, make_cgroup, sandbox_id, tmp_path, refused):
    """With the tracepoint the kernel has already swapped the script for its
    interpreter, so the script is judged by the path it was called by: absolute,
    plain and allowed, or refused. With BPF-LSM the script file passes the hook
    itself and is judged by identity like any file."""
    from enforcer.v1 import enforcer_pb2 as pb

    lsm = refused == "eperm"
    cgroup = make_cgroup()
    scripts, other = tmp_path / "scripts", tmp_path / "other"
    for directory in (scripts, other):
        directory.mkdir()
        script = directory / "job.sh"
        script.write_text("#!/bin/sh\nexit 3\n")
        script.chmod(0o755)
    apply_exec(cgroup, allow=["/usr/bin/", f"{scripts}/"])
    assert outcome(cgroup, "spawn", scripts / "job.sh") == "exit:3"
    assert outcome(cgroup, "spawn", other / "job.sh") == refused
    # A relative path says nothing of where the script is (tracepoint); its identity does (LSM).
    assert outcome(cgroup, "spawn", "./job.sh", cwd=scripts) == ("exit:3" if lsm else refused)
    # An allowed interpreter runs what it is given: the policy judged /bin/sh.
    assert outcome(cgroup, "spawn", "/bin/sh", other / "job.sh") == "exit:3"
    events = exec_denials(client, sandbox_id, 1 if lsm else 2)
    if lsm:
        assert [(e.exec.reason, e.exec.path) for e in events] == [(pb.EXEC_REASON_NOT_ALLOWED, str(other / "job.sh"))]
    else:
        assert [(e.exec.reason, e.exec.script) for e in events] == [(pb.EXEC_REASON_SCRIPT, True)] * 2

    # The interpreter itself must be allowed: here only the scripts directory is.
    apply_exec(cgroup, allow=[f"{scripts}/"])
    assert outcome(cgroup, "spawn", scripts / "job.sh") == refused


def test_exec_from_a_thread_and_after_vfork(apply_exec, make_cgroup, bins, tmp_path, refused):
    cgroup = make_cgroup()
    apply_exec(cgroup, allow=[TRUE])
    assert outcome(cgroup, "vfork", bins / "xmrig", tmp_path / "vforked") == refused
    assert outcome(cgroup, "vfork", TRUE) == "exit:0"
    # From a thread the exec replaces the whole process, so the probe itself is what is stopped.
    assert outcome(cgroup, "thread", bins / "xmrig", tmp_path / "threaded") == refused
    assert not (tmp_path / "vforked").exists() and not (tmp_path / "threaded").exists()


def test_argv_is_reported_bounded(client, apply_exec, make_cgroup, sandbox_id, bins):
    cgroup = make_cgroup()
    apply_exec(cgroup, allow=[TRUE])
    args = [f"arg{i:03d}-" + "x" * 20 for i in range(100)]
    probe(cgroup, "spawn", bins / "xmrig", *args)
    [event] = exec_denials(client, sandbox_id, 1)
    assert event.exec.argv_truncated
    reported, passed = list(event.exec.argv), [str(bins / "xmrig"), *args]
    assert reported[:-1] == passed[: len(reported) - 1]
    assert passed[len(reported) - 1].startswith(reported[-1])  # the last one kept may be cut short
    assert 1 < len(event.exec.argv) <= 32
    assert sum(len(a) + 1 for a in event.exec.argv) - 1 <= 512  # NUL-separated, the last maybe cut


def test_replacing_the_policy_switches_the_exec_rules(apply_exec, make_cgroup, bins, tmp_path, refused):
    cgroup = make_cgroup()
    apply_exec(cgroup, allow=[TRUE])
    assert outcome(cgroup, "spawn", bins / "xmrig", tmp_path / "a") == refused
    apply_exec(cgroup, allow=[TRUE, bins / "xmrig"])
    assert outcome(cgroup, "spawn", bins / "xmrig", tmp_path / "b") == "exit:0"
    apply_exec(cgroup, allow=[TRUE])
    assert outcome(cgroup, "spawn", bins / "xmrig", tmp_path / "c") == refused
    assert [p.name for p in tmp_path.iterdir() if p.name in "abc"] == ["b"]


def test_a_policy_without_an_exec_section_judges_no_exec(client, make_cgroup, sandbox_id, bins, tmp_path):
    cgroup = make_cgroup()
    client.apply({"sandbox": sandbox_id, "target": {"cgroup": str(cgroup)}})
    assert outcome(cgroup, "spawn", bins / "xmrig", tmp_path / "free") == "exit:0"
    assert outcome(cgroup, "memfd", TRUE) == "exit:0"


@pytest.mark.parametrize(("entry", "field", "reason"), [
    ("/nonexistent/enforcer-test-binary", "exec.allow[1]", "does not exist on this host"),
    ("/usr/bin", "exec.allow[1]", "is a directory: end it with '/'"),
    ("/usr/bin/true/", "exec.allow[1]", "ends with '/' but is not a directory"),
    ("/dev/null", "exec.allow[1]", "is not a regular file"),
    ("usr/bin/true", "exec.allow[1]", "is not an absolute path"),
    ("/usr/bin/../bin/true", "exec.allow[1]", "must be a plain path"),
])
def test_bad_exec_entries_are_refused_by_field_and_change_nothing(client, apply_exec, make_cgroup, sandbox_id, bins,
                                                                   tmp_path, refused, entry, field, reason):
    from enforcer.client import EnforcerError
    from enforcer.policy import PolicyError

    cgroup = make_cgroup()
    apply_exec(cgroup, allow=[TRUE])
    before = client.get(sandbox_id)
    # The client validates the document first (PolicyError); what only the host can
    # tell (does the file exist, what is it) the daemon refuses as INVALID_ARGUMENT.
    with pytest.raises((EnforcerError, PolicyError)) as refused_apply:
        apply_exec(cgroup, allow=[entry, bins / "xmrig"])
    if isinstance(refused_apply.value, EnforcerError):
        assert refused_apply.value.code == grpc.StatusCode.INVALID_ARGUMENT
        message = refused_apply.value.details
    else:
        message = str(refused_apply.value)
    assert message.startswith(f"{field}: ") and reason in message
    assert client.get(sandbox_id) == before
    assert outcome(cgroup, "spawn", bins / "xmrig", tmp_path / "mark") == refused
    assert outcome(cgroup, "spawn", TRUE) == "exit:0"


def test_status_names_the_exec_enforcement_in_use(client):
    status = client.status()
    assert status.exec_enforcement == expected_exec_mode()
    assert {195, 226} <= set(status.gpu_majors)


def exec_mode_run(exec_mode: str, tmp_path: Path, cgroup: Path, bins: Path) -> tuple[str, str]:
    """Under a daemon of its own started with ``--exec-mode``: (the mode it
    reports, how a refused exec ended). The refused program never ran."""
    proc = DaemonProcess(tmp_path, "--exec-mode", exec_mode)
    proc.start()
    try:
        with proc.client() as enf:
            enf.apply({"sandbox": "exec-mode", "target": {"cgroup": str(cgroup)},
                       "exec": {"default": "deny", "allow": [PY, TRUE]}})
            marker = tmp_path / "mined"
            result = outcome(cgroup, "spawn", bins / "xmrig", marker)
            assert not marker.exists()
            assert outcome(cgroup, "spawn", TRUE) == "exit:0"
            return enf.status().exec_enforcement, result
    finally:
        assert proc.stop() == 0


def test_the_tracepoint_mode_can_be_chosen_on_any_kernel(tmp_path, make_cgroup, bins, record_property):
    """--exec-mode tracepoint: on a BPF-LSM kernel this is the path the kernels
    without it get, so both modes are proven on each kernel that has both."""
    record_property("refused_exec", "killed")
    assert exec_mode_run("tracepoint", tmp_path, make_cgroup(), bins) == ("tracepoint", "killed")


@pytest.mark.needs_kernel("bpf_lsm", "--exec-mode lsm loads bprm_check_security")
def test_the_lsm_mode_can_be_required(tmp_path, make_cgroup, bins, record_property):
    record_property("refused_exec", "eperm")
    assert exec_mode_run("lsm", tmp_path, make_cgroup(), bins) == ("lsm", "eperm")


@pytest.mark.needs_kernel("no_bpf_lsm", "shows --exec-mode lsm refused where BPF-LSM is off")
def test_requiring_the_lsm_mode_without_bpf_lsm_is_refused_with_one_sentence(tmp_path):
    proc = DaemonProcess(tmp_path, "--exec-mode", "lsm")
    done = subprocess.run([sys.executable, "-m", "enforcer.cli", "daemon", "--socket", proc.socket,
                           "--audit-log", str(proc.audit_path), *proc.dirs, "--exec-mode", "lsm"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "enforcer daemon: exec mode lsm: this kernel does not enable BPF-LSM (bpf is not in "
        "/sys/kernel/security/lsm; boot it with lsm=...,bpf), use --exec-mode auto or tracepoint")
    assert not proc.pin_dir.exists() and not os.path.exists(proc.socket)


def test_full_exec_maps_refuse_the_apply_as_resource_exhausted_and_change_nothing(client, make_cgroup, sandbox_id,
                                                                                   tmp_path):
    """exec_paths holds 262,144 entries over all sandboxes: the 14th policy of
    20,000 entries does not fit. It is refused whole; the others keep working."""
    from enforcer.client import EnforcerError

    files = tmp_path / "many"
    files.mkdir()
    paths = []
    for i in range(20_000):
        path = files / f"t{i:05d}"
        path.touch()
        paths.append(str(path))
    applied = []
    try:
        with pytest.raises(EnforcerError) as full:
            for i in range(20):
                name = f"{sandbox_id[:80]}-{i}"
                client.apply({"sandbox": name, "target": {"cgroup": str(make_cgroup(f"c{i}"))},
                              "exec": {"allow": paths[:10_000], "deny": paths[10_000:]}})
                applied.append(name)
        assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "exec_" in full.value.details and "is full" in full.value.details
        assert len(applied) == 13
        listed = {p.policy.sandbox for p in client.list()}
        assert set(applied) <= listed and f"{sandbox_id[:80]}-13" not in listed
        client.remove(applied.pop())  # room again once a policy goes
        client.apply({"sandbox": f"{sandbox_id[:80]}-13", "target": {"cgroup": str(make_cgroup("retry"))},
                      "exec": {"allow": paths[:10_000], "deny": paths[10_000:]}})
        applied.append(f"{sandbox_id[:80]}-13")
    finally:
        for name in applied:
            client.remove(name)
