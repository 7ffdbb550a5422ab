"""`make bench-nft`: the side-by-side users weigh, the same 10,000-destination
egress allowlist enforced two ways in the same run.

  nftables, as OpenSandbox's egress sidecar does it: in the sandbox's network
      namespace, an output chain accepting destinations in an interval set of
      the allowed addresses and rejecting the rest (`nft` from the distro);
  Enforcer: the sandbox's cgroup under a 10,000-rule policy (default deny).

Both guard a process in a network namespace of the bench's own (loopback only:
nothing leaves the machine) doing bench/micro.c's TCP connect to a loopback
listener and UDP send+receive over loopback, against the same process with
neither (the baseline). Medians of interleaved rounds, as ratios to the
baseline and nanoseconds added per operation. Then the time to apply the
allowlist and to replace it by another of the same size: `nft -f` of the
table vs. ApplyPolicy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from bench.run import build_micro_bench  # noqa: E402
from enforcer.cgroupfs import cgroup2_mount, move_pid, remove_cgroup  # noqa: E402
from tests.e2e.harness.daemon import DaemonProcess  # noqa: E402
from tests.e2e.runtimes import ensure_packages  # noqa: E402

RULES = 10_000
NETNS = {"baseline": f"enf-bench-plain-{os.getpid()}", "nftables": f"enf-bench-nft-{os.getpid()}",
         "Enforcer": f"enf-bench-bpf-{os.getpid()}"}


def allowed_addresses(n: int, offset: int = 0) -> list[str]:
    """127.0.0.1 (the micro bench's listener) and n - 1 test addresses (never contacted)."""
    return ["127.0.0.1", *(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
                           for i in range(offset, offset + n - 1))]


def enforcer_policy(cgroup: Path, offset: int) -> dict:
    """The same destinations as the nft set: any protocol, any port."""
    return {"sandbox": "bench-nft", "target": {"cgroup": str(cgroup)},
            "network": {"default": "deny", "allow": [{"to": a} for a in allowed_addresses(RULES, offset)]}}


def nft_ruleset(addresses: list[str]) -> str:
    """The table, replaced whole in one transaction (delete + add)."""
    return ("table inet enf_egress\ndelete table inet enf_egress\n"
            "table inet enf_egress {\n"
            "  set allow4 { type ipv4_addr; flags interval; elements = { " + ", ".join(addresses) + " } }\n"
            "  chain output { type filter hook output priority 0; policy accept;\n"
            "    ip daddr @allow4 accept\n    meta nfproto ipv4 reject\n  }\n}\n")


def nft_apply(netns: str, ruleset: str, workdir: Path) -> float:
    path = workdir / "ruleset.nft"
    path.write_text(ruleset)
    started = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", str(path)], check=True)
    return time.perf_counter() - started


def make_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)


REFUSAL_CHECK = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                 "try:\n    s.sendto(b'x', ('127.0.0.2', 9))\n    print('sent')\n"
                 "except PermissionError:\n    print('EPERM')\n")


def refuses_unlisted(netns: str, cgroup: Path) -> bool:
    """Both ways really enforce: a datagram to 127.0.0.2 (not in the list, on
    the namespace's loopback) is refused with EPERM."""
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", REFUSAL_CHECK], capture_output=True,
                         text=True, check=True, preexec_fn=lambda: move_pid(0, cgroup))
    return out.stdout.strip() == "EPERM"


def ns_per_op(binary: Path, netns: str, cgroup: Path, op: str, count: int) -> float:
    out = subprocess.run(["ip", "netns", "exec", netns, str(binary), op, str(count)], capture_output=True, text=True,
                         check=True, preexec_fn=lambda: move_pid(0, cgroup))
    return float(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tcp-connects", type=int, default=5_000)
    parser.add_argument("--udp-sends", type=int, default=50_000)
    parser.add_argument("--replaces", type=int, default=5)
    args = parser.parse_args()
    ensure_packages(["nftables"])
    workdir = Path(tempfile.mkdtemp(prefix="enforcer-bench-"))
    binary = build_micro_bench(workdir)
    root = cgroup2_mount() / f"enforcer-bench-nft-{os.getpid()}"
    cgroups = {name: root / name.lower() for name in NETNS}
    for path in cgroups.values():
        path.mkdir(parents=True)
    for name in NETNS.values():
        make_netns(name)
    daemon = DaemonProcess(workdir)
    daemon.start()
    try:
        nft_times = [nft_apply(NETNS["nftables"], nft_ruleset(allowed_addresses(RULES)), workdir)]
        with daemon.client() as enf:
            started = time.perf_counter()
            enf.apply(enforcer_policy(cgroups["Enforcer"], 0))
            bpf_times = [time.perf_counter() - started]
            for i in range(1, args.replaces + 1):
                nft_times.append(nft_apply(NETNS["nftables"], nft_ruleset(allowed_addresses(RULES, i)), workdir))
                policy = enforcer_policy(cgroups["Enforcer"], i)
                started = time.perf_counter()
                enf.apply(policy)
                bpf_times.append(time.perf_counter() - started)
            refusing = {name: refuses_unlisted(netns, cgroups[name]) for name, netns in NETNS.items()}
            if refusing != {"baseline": False, "nftables": True, "Enforcer": True}:
                raise SystemExit(f"the allowlists do not enforce as set up: {refusing}")
            samples: dict[str, dict[str, list[float]]] = {op: {n: [] for n in NETNS} for op in ("tcp", "recv")}
            counts = {"tcp": args.tcp_connects, "recv": args.udp_sends}
            for op in samples:
                for name, netns in NETNS.items():  # warm-up
                    ns_per_op(binary, netns, cgroups[name], op, counts[op] // 10)
            for _ in range(args.rounds):
                for op, per in samples.items():
                    for name, netns in NETNS.items():
                        per[name].append(ns_per_op(binary, netns, cgroups[name], op, counts[op]))
    finally:
        daemon.stop()
        for name in NETNS.values():
            subprocess.run(["ip", "netns", "del", name], check=False)
        remove_cgroup(root)
    print(f"The same {RULES:,}-destination egress allowlist, nftables (interval set, in the sandbox's netns) vs "
          f"Enforcer (cgroup, BPF), {args.rounds} interleaved rounds, medians")
    for op, title in (("tcp", f"TCP connect to loopback ({args.tcp_connects} per round)"),
                      ("recv", f"UDP send+receive over loopback ({args.udp_sends} per round)")):
        base = statistics.median(samples[op]["baseline"])
        print(f"  {title}")
        for name in NETNS:
            value = statistics.median(samples[op][name])
            print(f"    {name:9} {value / 1000:8.2f} us  {value / base:5.2f}x  {(value - base):+8.0f} ns")
    print(f"  apply the allowlist: nft -f {nft_times[0] * 1000:.0f} ms, ApplyPolicy {bpf_times[0] * 1000:.0f} ms")
    print(f"  replace it ({args.replaces} times, median): nft -f {statistics.median(nft_times[1:]) * 1000:.0f} ms, "
          f"ApplyPolicy {statistics.median(bpf_times[1:]) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
