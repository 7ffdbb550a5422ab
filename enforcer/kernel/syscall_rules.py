"""Encode a syscall policy into syscall_rules entries, and say which syscalls
need a hook for it (enforcer.kernel.syscall_hooks attaches them)."""

from __future__ import annotations

import struct

from enforcer.kernel import layout
from enforcer.policy import SyscallPolicy, Verdict
from enforcer.policy.syscalls import syscall_names, syscall_table

_KEY = struct.Struct("<II")  # layout.SyscallKey; tests/unit/test_policy_syscalls.py checks it


def default_verdict(policy: SyscallPolicy) -> int:
    return layout.VERDICT_DENY if policy.default is Verdict.DENY else layout.VERDICT_ALLOW


def hooked(policy: SyscallPolicy) -> tuple[set[str], bool]:
    """The syscalls to hook for this policy, and whether it needs every syscall
    hooked (it refuses by default)."""
    return set(policy.denied()), policy.default is Verdict.DENY


def pack_syscalls(policy: SyscallPolicy, generation: int) -> list[tuple[bytes, bytes]]:
    """A rule per syscall the policy names, allowed or denied (deny wins)."""
    table = syscall_table()
    verdicts = {name: layout.VERDICT_ALLOW for name in policy.allow}
    verdicts.update({name: layout.VERDICT_DENY for name in policy.denied()})
    return [(_KEY.pack(generation, table[name]), bytes([verdict])) for name, verdict in verdicts.items()]


def syscall_name(number: int) -> str:
    """The name of a number in this architecture's table ("" if it has none)."""
    return syscall_names().get(number, "")
