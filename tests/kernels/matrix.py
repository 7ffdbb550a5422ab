"""`make test-kernels`: the end-to-end tests whose outcome depends on the kernel
(marked ``kernel``) on this machine's kernel and on each VM kernel below,
then one report per kernel (tests/kernels/report.py).

    python -m tests.kernels.matrix [--only NAME]... [--out DIR] [-- PYTEST ARGS]

(or ENFORCER_KERNELS=name,name: what `make test` runs where a kernel cannot be
fetched, e.g. Ubuntu, whose registry has no Debian kernel)

A VM kernel is booted by tests/kernels/vm.sh under qemu (software emulation)
with this machine's root filesystem underneath, so it tests this checkout.
Exits non-zero if any kernel's run failed."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.kernels import report, watch

REPO = Path(__file__).resolve().parents[2]
VM = Path(__file__).with_name("vm.sh")


@dataclass(frozen=True)
class Kernel:
    name: str
    description: str
    vm: bool = False
    lsm: str = "default"             # the VM kernel's lsm= boot parameter ("default": none given)
    offers: tuple[str, ...] = ()     # features it must offer (tests/kernels/features.py)
    slowdown: float = 1.0            # how much longer waits may take (software emulation)
    test_timeout: int = 180          # seconds one test may take before it fails with every thread's stack
    run_timeout: int = 20 * 60       # seconds the whole run may take before it is killed

    @property
    def stall_timeout(self) -> int:
        """No test starting or ending for this long is a hang (a timed-out
        test's clean-up included)."""
        return self.test_timeout + 300


KERNELS = (
    Kernel("host", "this machine's running kernel"),
    # Debian 12's kernel, its newest 6.1 in the registry, booted as Debian ships it:
    # its CONFIG_LSM lists bpf (with AppArmor, Yama, Landlock, TOMOYO), so stock
    # Debian 12 hosts get the BPF-LSM mode. Emulation (TCG) is ~10x slower.
    Kernel("debian-6.1-bpf-lsm", "Debian 12's 6.1 kernel with its own LSMs (bpf among them), under qemu",
           vm=True, lsm="default", offers=("bpf_lsm", "io_uring_socket", "code_patching"), slowdown=10.0,
           test_timeout=600, run_timeout=40 * 60),
)


def pytest_command(kernel: Kernel, junit: Path, progress: Path, extra: list[str]) -> list[str]:
    # -v: each test's name is on the console when it starts. The time limit
    # fails a stuck test with every thread's stack and goes on with the next.
    return ["env", f"ENFORCER_TEST_KERNEL_OFFERS={','.join(kernel.offers)}",
            f"ENFORCER_TEST_SLOWDOWN={kernel.slowdown:g}", f"ENFORCER_TEST_PROGRESS={progress}",
            str(REPO / ".venv/bin/python"), "-m", "pytest", "-v", "-p", "no:cacheprovider",
            "-p", "tests.kernels.progress", "--require-bpf", "-o", "junit_family=xunit1", "-m", "kernel",
            "-o", f"timeout={kernel.test_timeout}", f"--junitxml={junit}", *extra, "tests/e2e"]


def run(kernel: Kernel, out: Path, extra: list[str]) -> report.KernelRun:
    junit = out / f"{kernel.name}.xml"
    progress = out / f"{kernel.name}.progress"
    console = out / f"{kernel.name}.console.log"
    for stale in (junit, progress, console):
        stale.unlink(missing_ok=True)
    command = pytest_command(kernel, junit, progress, extra)
    print(f"== {kernel.name}: {kernel.description}", flush=True)
    if kernel.vm:
        # The VM's own limit is a little longer: the watchdog here says why it ended.
        env = {**os.environ, "LSM": kernel.lsm, "RESULTS": str(out), "CONSOLE": str(console),
               "VM_TIMEOUT": str(kernel.run_timeout + 60)}
        command = [str(VM), *command]
    else:
        env = dict(os.environ)
        host_log = watch.host_kernel_log()
    print("   " + shlex.join(command), flush=True)
    started = time.monotonic()
    outcome = watch.run_watched(command, env, REPO, progress, kernel.stall_timeout, kernel.run_timeout)
    if outcome.hang:
        print(f"== {kernel.name}: {outcome.hang}", flush=True)
    if kernel.vm:  # what the guest kernel said: its console
        kernel_log = console.read_text(errors="replace") if console.exists() else ""
    else:          # what this kernel said during the run
        kernel_log = watch.new_lines(host_log, watch.host_kernel_log())
    run = report.read(kernel.name, junit, outcome.status, time.monotonic() - started)
    run.hang = outcome.hang
    run.running = watch.running_test(progress)
    run.kernel_trouble = watch.kernel_trouble(kernel_log)
    if run.kernel_trouble and run.status == 0:
        run.status = 1  # a lockup or stall the kernel recovered from is still a failure
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=[k.name for k in KERNELS],
                        help="run only this kernel (repeatable; default: $ENFORCER_KERNELS, else all)")
    parser.add_argument("--out", default=str(REPO / "build/kernels"), help="where reports go (default build/kernels)")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    only = args.only or [name for name in os.environ.get("ENFORCER_KERNELS", "").split(",") if name]
    unknown = set(only) - {k.name for k in KERNELS}
    if unknown:
        parser.error(f"ENFORCER_KERNELS: unknown kernel(s) {sorted(unknown)}; known: {[k.name for k in KERNELS]}")
    kernels = [k for k in KERNELS if not only or k.name in only]
    runs = [run(kernel, out, args.pytest_args) for kernel in kernels]
    text = report.render(runs)
    (out / "report.md").write_text(text)
    print(text)
    print(f"(also in {out / 'report.md'})")
    return 0 if all(run.status == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
