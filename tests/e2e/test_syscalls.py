"""Syscall rules end to end: a real daemon, real sandbox cgroups, real processes
making the refused calls.

A refused syscall kills its caller from the syscall's entry tracepoint: the
caller runs no further instruction, but the call itself is not prevented (the
mkdir test shows it). With BPF-LSM, the syscalls an LSM hook stands for
(syscall_hooks.LSM_SYSCALLS) fail with EPERM there instead. Only the syscalls
some policy refuses are hooked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enforcer.policy.syscalls import X86_64
from tests.e2e.harness.daemon import DaemonProcess
from tests.e2e.harness.probes import EPERM
from tests.e2e.harness.waits import wait_denials

pytestmark = pytest.mark.kernel

PROBE = Path(__file__).with_name("syscall_probe.py")
CLONE_NEWUTS = 0x04000000
BPF_PROG_GET_NEXT_ID = 11


def call(cgroup: Path | None, name: str, *args: object) -> Any:
    """One syscall by a real process in ``cgroup``: "killed", or what it returned."""
    from enforcer.cgroupfs import move_pid

    done = subprocess.run([sys.executable, str(PROBE), name, *map(str, args)], capture_output=True, text=True,
                          timeout=60, preexec_fn=(lambda: move_pid(0, cgroup)) if cgroup else None)
    if done.returncode == -9:
        return "killed"
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def syscall_denials(client: Any, sandbox: str, count: int) -> list[Any]:
    from enforcer.v1 import enforcer_pb2 as pb

    return [d for d in wait_denials(client, sandbox, count) if d.kind == pb.DENIAL_KIND_SYSCALL]


def apply(client: Any, sandbox: str, cgroup: Path, syscalls: dict[str, Any] | None, mode: str = "enforce") -> None:
    client.apply({"sandbox": sandbox, "target": {"cgroup": str(cgroup)}, "labels": {"run": "sys-test"},
                  "mode": mode, **({"syscalls": syscalls} if syscalls is not None else {})})


def refused_by(client: Any) -> dict[str, str]:
    return {row.name: row.refused_by for row in client.status().syscalls}


def hooks(client: Any) -> set[str]:
    return {p.name for p in client.status().programs if p.name.startswith("syscall-")}


def test_a_denied_syscall_kills_its_caller_and_is_reported(client, make_cgroup, sandbox_id):
    cgroup = make_cgroup()
    apply(client, sandbox_id, cgroup, {"deny": ["unshare", "keyctl"]})
    try:
        assert call(cgroup, "getpid")["returned"] > 0
        assert call(cgroup, "unshare", CLONE_NEWUTS) == "killed"
        assert call(None, "unshare", CLONE_NEWUTS) == {"returned": 0, "errno": 0}  # outside: not judged
        (denial,) = syscall_denials(client, sandbox_id, 1)
        assert (denial.syscall.name, denial.syscall.number, denial.syscall.args[0]) == ("unshare", 272, CLONE_NEWUTS)
        assert dict(denial.labels) == {"run": "sys-test"} and denial.process.comm.startswith("python")
        stats = client.stats(sandbox_id)
        assert (stats.syscall.refused, stats.syscall.audited) == (1, 0)
        assert {"syscall-unshare", "syscall-keyctl"} <= hooks(client)
    finally:
        client.remove(sandbox_id)
    assert not {"syscall-unshare", "syscall-keyctl"} & hooks(client)  # nothing named them any more


# (the policy's deny entry, the probe's call): one per LSM hook route
LSM_ROUTES = [
    ("ptrace", ["ptrace", 0]),                        # PTRACE_TRACEME: ptrace_traceme
    ("process_vm_readv", ["peek-parent"]),            # ptrace_access_check, told apart by the syscall number
    ("init_module", ["init-module-zeros"]),           # kernel_load_data(LOADING_MODULE)
    ("finit_module", ["finit-module-self"]),          # kernel_read_file(READING_MODULE)
    ("kexec_load", ["kexec_load", 0, 0, 0, 0x00FF0000]),  # kernel_load_data(LOADING_KEXEC_IMAGE); bad arch if let by
    ("socket", ["socket", 1, 1, 0]),                  # socket_create
    ("socketpair", ["socketpair-unix"]),              # socket_create, told apart by the syscall number
]


@pytest.mark.parametrize(("name", "probe"), LSM_ROUTES, ids=[name for name, _ in LSM_ROUTES])
def test_each_lsm_route_fails_with_eperm_or_kills_at_the_call(client, make_cgroup, sandbox_id, by_lsm, name, probe):
    """As root in the sandbox: EPERM from the hook with BPF-LSM, else killed at
    the call's entry; status says which. A syscall the kernel does not build
    (modules and kexec on the 6.18 machines) can only fail with ENOSYS."""
    cgroup = make_cgroup()
    apply(client, sandbox_id, cgroup, {"deny": [name]})
    try:
        how = refused_by(client)[name]
        if how == "none":
            assert call(cgroup, *probe) == {"returned": -1, "errno": 38}
            return
        assert how == ("eperm" if by_lsm == EPERM else "kill")
        assert call(cgroup, *probe) == by_lsm
        (denial,) = syscall_denials(client, sandbox_id, 1)
        assert (denial.syscall.name, denial.syscall.refused_by_lsm, denial.syscall.compat) == (
            name, by_lsm == EPERM, False)
        assert client.stats(sandbox_id).syscall.refused == 1
    finally:
        client.remove(sandbox_id)


def test_a_32_bit_call_is_held_by_an_lsm_hook_or_a_default_deny_only(client, make_cgroup, sandbox_id, by_lsm):
    """int 0x80 carries i386 numbers and the kernel leaves such calls out of the
    per-syscall tracepoints: a deny list does not see them (the gap this shows).
    The LSM hooks do (i386 ptrace gets EPERM), and so does the raw sys_enter of
    a default-deny policy, which kills any 32-bit call of its sandbox."""
    cgroup = make_cgroup()
    apply(client, sandbox_id, cgroup, {"deny": ["getppid", "ptrace"]})
    try:
        assert call(cgroup, "getppid") == "killed"
        assert call(cgroup, "int80", 64)["errno"] == 0  # i386 getppid: not seen
        assert call(cgroup, "int80", 26, 0) == (EPERM if by_lsm == EPERM else {"returned": 0, "errno": 0})
        seen = [(d.syscall.name, d.syscall.compat) for d in syscall_denials(client, sandbox_id, 1 + (by_lsm == EPERM))]
        assert seen == [("getppid", False)] + ([("ptrace", True)] if by_lsm == EPERM else [])
    finally:
        client.remove(sandbox_id)
    strict = f"{sandbox_id}-strict"  # its own denials only
    apply(client, strict, cgroup, {"default": "deny", "allow": sorted(X86_64)})
    try:
        assert refused_by(client)["*"] == "kill"
        assert call(cgroup, "getppid")["returned"] > 0
        assert call(cgroup, "int80", 64) == "killed"
        (denial,) = syscall_denials(client, strict, 1)
        assert (denial.syscall.name, denial.syscall.number, denial.syscall.compat) == ("", 64, True)
    finally:
        client.remove(strict)


def test_the_refused_call_itself_still_runs(client, make_cgroup, sandbox_id, tmp_path):
    """What a tracepoint cannot do, shown: the caller dies, its mkdir is done."""
    cgroup = make_cgroup()
    apply(client, sandbox_id, cgroup, {"deny": ["mkdir"]})
    try:
        target = tmp_path / "made-by-a-killed-caller"
        assert call(cgroup, "mkdir", str(target), 0o755) == "killed"
        assert target.is_dir()
    finally:
        client.remove(sandbox_id)


def test_bpf_and_perf_event_open_are_refused_unless_allowed(client, make_cgroup, sandbox_id, by_lsm):
    cgroup = make_cgroup()
    apply(client, sandbox_id, cgroup, None)  # no syscalls section at all
    try:
        assert call(cgroup, "bpf", BPF_PROG_GET_NEXT_ID, 0, 0) == by_lsm
        assert call(cgroup, "perf-sw") == by_lsm
        denials = syscall_denials(client, sandbox_id, 2)
        assert [(d.syscall.name, d.syscall.refused_by_lsm) for d in denials] == [
            ("bpf", by_lsm == EPERM), ("perf_event_open", by_lsm == EPERM)]
        apply(client, sandbox_id, cgroup, {"allow": ["bpf"]})
        ran = call(cgroup, "bpf", BPF_PROG_GET_NEXT_ID, 0, 0)  # EFAULT (a null attr): not refused
        assert ran != "killed" and ran["errno"] != 1
        assert call(cgroup, "perf-sw") == by_lsm
    finally:
        client.remove(sandbox_id)


def test_mount_is_refused_like_the_kernel_can(client, make_cgroup, sandbox_id, tmp_path, by_lsm):
    """With BPF-LSM the mount fails (sb_mount): nothing is mounted."""
    cgroup = make_cgroup()
    target = tmp_path / "mnt"
    target.mkdir()
    apply(client, sandbox_id, cgroup, {"deny": ["mount"]})
    try:
        # A mount in a private mount namespace of the probe's own, so nothing outlives it.
        assert call(cgroup, "unshare-mount-tmpfs", str(target)) == by_lsm
        assert [d.syscall.name for d in syscall_denials(client, sandbox_id, 1)] == ["mount"]
    finally:
        client.remove(sandbox_id)


def test_audit_mode_reports_and_lets_the_call_run(client, make_cgroup, sandbox_id):
    cgroup = make_cgroup()
    apply(client, sandbox_id, cgroup, {"deny": ["unshare"]}, mode="audit")
    try:
        assert call(cgroup, "unshare", CLONE_NEWUTS) == {"returned": 0, "errno": 0}
        (denial,) = syscall_denials(client, sandbox_id, 1)
        assert denial.action == 2  # ACTION_AUDITED
        assert client.stats(sandbox_id).syscall.audited == 1
    finally:
        client.remove(sandbox_id)


def test_a_default_deny_allowlist_refuses_every_other_call(client, make_cgroup, sandbox_id):
    """Every syscall but three allowed: the raw sys_enter hook judges them all,
    in place of the per-syscall ones, while such a policy is applied."""
    cgroup = make_cgroup()
    refused = {"mkdir", "mkdirat", "unshare"}
    apply(client, sandbox_id, cgroup, {"default": "deny", "allow": sorted(set(X86_64) - refused)})
    try:
        assert hooks(client) == {"syscall-every"}
        assert call(cgroup, "getpid")["returned"] > 0
        assert call(cgroup, "unshare", CLONE_NEWUTS) == "killed"
        assert [d.syscall.name for d in syscall_denials(client, sandbox_id, 1)] == ["unshare"]
    finally:
        client.remove(sandbox_id)
    assert "syscall-every" not in hooks(client)


def test_bad_syscall_policies_are_refused_by_field_and_change_nothing(client, make_cgroup, sandbox_id):
    from enforcer.client import EnforcerError
    from enforcer.v1 import enforcer_pb2 as pb

    cgroup = make_cgroup()
    before = sorted(p.policy.sandbox for p in client.list())
    cases = {
        ("nope",): "syscalls.deny[0]: unknown syscall 'nope'",
        ("ptrace", "999"): "syscalls.deny[1]: unknown syscall '999'",  # on the wire, names only
        ("read",) * 513: "syscalls.deny: at most 512 entries, got 513",
    }
    for deny, message in cases.items():
        msg = pb.Policy(sandbox=sandbox_id, target=pb.Target(cgroup=str(cgroup)),
                        syscalls=pb.SyscallPolicy(deny=list(deny)))
        with pytest.raises(EnforcerError) as caught:
            client.apply(msg)
        assert caught.value.code.name == "INVALID_ARGUMENT" and message in caught.value.details, caught.value.details
    both = pb.Policy(sandbox=sandbox_id, target=pb.Target(cgroup=str(cgroup)),
                     syscalls=pb.SyscallPolicy(allow=["ptrace"], deny=["ptrace"]))
    with pytest.raises(EnforcerError, match=r"syscalls.deny\[0\]: ptrace is in allow too"):
        client.apply(both)
    assert sorted(p.policy.sandbox for p in client.list()) == before


def test_a_syscall_this_kernel_does_not_build_is_accepted_and_said(client, make_cgroup, sandbox_id, daemon):
    """tuxcall is in the x86_64 table but no kernel builds it: it can only fail
    (ENOSYS), so a deny entry holds without a hook; the log says so."""
    cgroup = make_cgroup()
    apply(client, sandbox_id, cgroup, {"deny": ["tuxcall", "unshare"]})
    try:
        assert {"syscall-unshare"} <= hooks(client) and "syscall-tuxcall" not in hooks(client)
        assert any(e.get("event") == "syscalls_not_built" and e.get("syscalls") == ["tuxcall"]
                   for e in daemon.log_events())
    finally:
        client.remove(sandbox_id)


def test_syscall_rules_hold_while_no_daemon_runs_and_after_a_restart(tmp_path, make_cgroup):
    cgroup = make_cgroup()
    proc = DaemonProcess(tmp_path)
    proc.start()
    try:
        with proc.client() as enf:
            apply(enf, "sys-restart", cgroup, {"deny": ["unshare"]})
        proc.stop(keep_enforcing=True)
        assert call(cgroup, "unshare", CLONE_NEWUTS) == "killed"  # the pinned link judges on its own
        proc.start()
        with proc.client() as enf:
            assert call(cgroup, "unshare", CLONE_NEWUTS) == "killed"
            assert "syscall-unshare" in hooks(enf)  # this build's own, the old build's retired
            assert len(syscall_denials(enf, "sys-restart", 2)) == 2
            enf.remove("sys-restart")
    finally:
        proc.stop()
