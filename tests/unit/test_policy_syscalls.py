"""Syscall rules in the policy: names (or numbers) of this architecture, checked
against the kernel's own table, and bad lists refused by field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from enforcer.policy import PolicyError, SyscallPolicy, Verdict, parse_policy, policy_to_document
from enforcer.policy.syscalls import X86_64
from enforcer.wire import policy_from_proto, policy_to_proto

HEADER = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


def policy(syscalls: object) -> object:
    return parse_policy({"sandbox": "s", "target": {"cgroup": "/x"}, "syscalls": syscalls})


@pytest.mark.skipif(not HEADER.exists(), reason="no x86_64 kernel UAPI header here (linux-libc-dev)")
def test_the_table_is_the_kernels():
    header = dict(re.findall(r"#define __NR_(\w+) (\d+)", HEADER.read_text()))
    # The header may be older than the table's source; every name it has must agree.
    assert {name: int(nr) for name, nr in header.items()}.items() <= X86_64.items()


def test_names_and_numbers_resolve_and_round_trip():
    parsed = policy({"deny": ["ptrace", 165, "bpf"], "allow": ["perf_event_open"]})
    assert parsed.syscalls == SyscallPolicy(Verdict.ALLOW, ("perf_event_open",), ("ptrace", "mount", "bpf"))
    assert parse_policy(policy_to_document(parsed)) == parsed
    assert policy_from_proto(policy_to_proto(parsed)) == parsed


def test_bpf_and_perf_event_open_are_denied_unless_allowed():
    assert SyscallPolicy().denied() == ("bpf", "perf_event_open")
    assert SyscallPolicy(allow=("bpf",)).denied() == ("perf_event_open",)
    assert SyscallPolicy(deny=("ptrace", "bpf")).denied() == ("ptrace", "bpf", "perf_event_open")


def test_a_wire_policy_without_a_default_allows_the_rest():
    from enforcer.v1 import enforcer_pb2 as pb

    msg = pb.Policy(sandbox="s", target=pb.Target(cgroup="/x"), syscalls=pb.SyscallPolicy(deny=["ptrace"]))
    assert policy_from_proto(msg).syscalls.default is Verdict.ALLOW


@pytest.mark.parametrize(("syscalls", "message"), [
    ({"deny": ["ptrac"]}, "syscalls.deny[0]: unknown syscall 'ptrac' on this architecture"),
    ({"deny": ["ptrace", 999]}, "syscalls.deny[1]: 999 is not a syscall number on this architecture"),
    ({"deny": [400]}, "syscalls.deny[0]: 400 is not a syscall number"),  # a gap in the x86_64 numbers
    ({"allow": ["mount"], "deny": ["ptrace", "mount"]}, "syscalls.deny[1]: mount is in allow too"),
    ({"deny": ["ptrace", 101]}, "syscalls.deny[1]: ptrace is listed twice"),
    ({"deny": ["read"] * 513}, "syscalls.deny: at most 512 entries, got 513"),
    ({"deny": "ptrace"}, "syscalls.deny: must be a list of syscall names, got str"),
    ({"deny": [True]}, "syscalls.deny[0]: must be a syscall name, got bool"),
    ({"default": "maybe"}, "syscalls.default: must be 'allow' or 'deny', got 'maybe'"),
    ({"kill": ["ptrace"]}, "syscalls.kill: unknown field"),
    (["ptrace"], "syscalls: must be a syscall policy (a mapping), got list"),
])
def test_bad_syscall_lists_are_refused_by_field(syscalls, message):
    with pytest.raises(PolicyError) as caught:
        policy(syscalls)
    assert str(caught.value).startswith(message), str(caught.value)


def test_rules_pack_into_the_mirrored_key_and_deny_wins():
    from enforcer.kernel import layout
    from enforcer.kernel.syscall_rules import hooked, pack_syscalls

    policy = SyscallPolicy(Verdict.DENY, allow=("read", "perf_event_open"), deny=("ptrace",))
    entries = dict(pack_syscalls(policy, 7))
    keys = {layout.SyscallKey.from_buffer_copy(k).nr: (layout.SyscallKey.from_buffer_copy(k).generation, v)
            for k, v in entries.items()}
    assert keys == {0: (7, bytes([layout.VERDICT_ALLOW])), 298: (7, bytes([layout.VERDICT_ALLOW])),
                    101: (7, bytes([layout.VERDICT_DENY])), 321: (7, bytes([layout.VERDICT_DENY]))}  # bpf: implied
    assert hooked(policy) == ({"ptrace", "bpf"}, True)
    assert hooked(SyscallPolicy()) == ({"bpf", "perf_event_open"}, False)


def test_every_syscall_left_to_an_lsm_hook_has_one():
    """In the lsm mode a syscall in LSM_SYSCALLS gets no tracepoint: a name
    there that no hook of bpf/syscall.bpf.c refuses would be refused by nothing."""
    from enforcer.kernel.syscall_hooks import LSM_SYSCALLS, lsm_defines

    source = (Path(__file__).resolve().parents[2] / "bpf" / "syscall.bpf.c").read_text()
    hooks = source[source.rindex("#ifdef ENF_LSM"):]  # the LSM hooks and their helpers
    named = {macro for macro in lsm_defines(True) if macro.startswith("ENF_NR_")}
    assert len(named) == len(LSM_SYSCALLS)
    assert sorted(macro for macro in named if macro not in hooks) == []
