"""Live code patching while other CPUs run the patched code.

Attaching a BPF-LSM program rewrites the entry of its hook (a BPF trampoline),
as ftrace and static keys do, with the kernel's int3 protocol (text_poke_bp).
Under qemu 7.2's multi-threaded TCG that protocol livelocks the CPUs that run
the function being patched: they spin at its first byte until the lockup
detector fires. That is what hung the 6.1 VM during the restart test (a daemon
attaching its links while a sandboxed process created sockets), and it happens
without any BPF (tests/kernels/text_poke_stress.sh), so the matrix boots its VM
with single-threaded TCG (tests/kernels/vm.sh). This test keeps that true on
each kernel: if the patching stalls a CPU, the VM's lockup detector ends the
run and the report names this test."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.e2e.harness.env import patience
from tests.kernels.features import TRACING

pytestmark = pytest.mark.kernel  # the outcome depends on the kernel (and the machine): runs on each

PATCHED = "security_socket_create"  # every socket() runs it: the hook BPF-LSM patches for packet sockets
CALLER = """
import socket, sys, time
end = time.monotonic() + float(sys.argv[1])
calls = 0
while time.monotonic() < end:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    calls += 1
print(calls)
"""


@pytest.mark.needs_kernel("code_patching", "patches a function's entry with ftrace")
def test_patching_a_function_other_cpus_are_running_does_not_stall_them():
    seconds = patience(6)  # a minute in the VM, where the livelock came within 25-100 s of patching
    callers = [subprocess.Popen([sys.executable, "-c", CALLER, str(seconds)], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    rounds = 0
    try:
        (TRACING / "set_ftrace_filter").write_text(PATCHED)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            (TRACING / "current_tracer").write_text("function")
            (TRACING / "current_tracer").write_text("nop")
            rounds += 1
    finally:
        (TRACING / "current_tracer").write_text("nop")
        (TRACING / "set_ftrace_filter").write_text("")
        calls = [int(caller.communicate(timeout=patience(30))[0]) for caller in callers]
    assert rounds >= 10, f"only {rounds} patch-unpatch rounds in {seconds:.0f} s"
    assert all(count > 0 for count in calls), calls
