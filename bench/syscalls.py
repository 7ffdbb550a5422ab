"""`make bench-syscalls`: what syscall rules cost a syscall.

bench/micro.c's getpid loop (the cheapest syscall, so the hook's share is the
largest) in interleaved rounds, against the same loop outside any sandbox with
no syscall policy applied (the baseline, same run):

  outside, deny list:   outside every sandbox while a sandbox refuses the
                        issue's 12 syscalls (target <= 1.02x);
  inside, deny list:    in that sandbox (target <= 1.10x);
  outside, allowlist:   outside every sandbox while another sandbox has
                        `default: deny` and a 100-syscall allowlist (the raw
                        sys_enter hook then runs for every task's syscalls);
  inside, allowlist:    in that sandbox.

Medians of the rounds, as ratios to the baseline and nanoseconds added.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from bench.run import bench_cgroups, build_micro_bench, ns_per_op  # noqa: E402
from enforcer.cgroupfs import remove_cgroup  # noqa: E402
from enforcer.policy.syscalls import X86_64  # noqa: E402
from tests.e2e.harness.daemon import DaemonProcess  # noqa: E402

DENY_12 = ["ptrace", "process_vm_writev", "bpf", "perf_event_open", "init_module", "finit_module", "kexec_load",
           "mount", "unshare", "setns", "keyctl", "io_uring_setup"]
# What the loop's process does between the move into the cgroup and its exit
# (Python's child after fork, the exec, the dynamic loader, libc start-up).
NEEDED = ["execve", "exit_group", "arch_prctl", "set_tid_address", "openat", "newfstatat", "set_robust_list",
          "prlimit64", "getrandom", "rseq", "close_range"]


def allowlist_100() -> list[str]:
    """The loop's needs, then the lowest-numbered syscalls up to 100 names."""
    by_number = [name for name, _ in sorted(X86_64.items(), key=lambda item: item[1]) if name not in NEEDED]
    return NEEDED + by_number[:100 - len(NEEDED)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=2_000_000)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="enforcer-bench-"))
    binary = build_micro_bench(workdir)
    root, groups = bench_cgroups("outside", "deny-list", "allowlist")
    policies = {
        "deny-list": {"sandbox": "bench-deny", "target": {"cgroup": str(groups["deny-list"])},
                      "syscalls": {"deny": DENY_12}},
        "allowlist": {"sandbox": "bench-allow", "target": {"cgroup": str(groups["allowlist"])},
                      "syscalls": {"default": "deny", "allow": allowlist_100()}},
    }
    daemon = DaemonProcess(workdir)
    daemon.start()
    samples: dict[str, list[float]] = {}

    def sample(name: str, group: str) -> None:
        samples.setdefault(name, []).append(ns_per_op(binary, groups[group], "getpid", args.calls))

    try:
        with daemon.client() as enf:
            ns_per_op(binary, groups["outside"], "getpid", args.calls // 10)  # warm-up
            for _ in range(args.rounds):
                sample("baseline (no syscall policy)", "outside")
                enf.apply(policies["deny-list"])
                sample("outside, deny list of 12", "outside")
                sample("inside, deny list of 12", "deny-list")
                enf.apply(policies["allowlist"])
                sample("outside, 100-syscall allowlist applied", "outside")
                sample("inside, 100-syscall allowlist", "allowlist")
                enf.remove("bench-allow")
                enf.remove("bench-deny")
    finally:
        daemon.stop()
        remove_cgroup(root)
    base = statistics.median(samples["baseline (no syscall policy)"])
    print(f"getpid, {args.calls:,} calls per sample, medians of {args.rounds} interleaved rounds")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:42} {median:7.1f} ns  {median / base:5.2f}x  {median - base:+6.1f} ns")
    print("targets: outside <= 1.02x with the deny list applied; inside the deny list <= 1.10x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
