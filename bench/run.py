"""`make bench`: Enforcer's speed targets, each as a ratio against a baseline
measured in the same run (the machines are noisy, so runs are interleaved and
the median of several rounds is reported).

  connect() added cost: UDP connect (~1 us) and TCP loopback connect, from a
      process in an unguarded cgroup vs. one guarded by a 1-rule and a
      10,000-rule policy. Targets: <= 0.4 us added at 10,000 rules (UDP);
      TCP <= 1.05x unguarded.
  fork+exec of /bin/true from a process guarded by a 1,000-path exec policy vs.
      an unguarded one. Target: <= 1.05x.
  fork+exec of /bin/true outside every sandbox, nothing loaded vs. a daemon up
      (the exec, fork, exit and cgroup-move tracepoints every task passes). No target.
  ApplyPolicy latency for a 1,000-rule policy (replace), p50/p99. Target p99 <= 20 ms.
  Denial stream to one follow=True client (daemon with --events-per-sec 0): a
      sandbox refused as fast as it can go (delivered/s, target >= 50,000), at
      20,000/s for 5 s (target: nothing lost), and at 1,000/s (kernel-to-client
      latency, target p99 <= 50 ms); delivered + reported lost must equal the
      kernel's count.
  Daemon start-up to ready (health SERVING). Target <= 2 s.
  DNS through the forwarder vs. direct (bench/dns.py): added latency p50/p99
      (target p99 <= 2 ms) and queries/s sustained (target >= 5,000).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# It forks measuring processes while gRPC channels are open (see tests/conftest.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from bench import dns as dns_bench  # noqa: E402
from enforcer.cgroupfs import cgroup2_mount, move_pid, remove_cgroup  # noqa: E402
from enforcer.policy import parse_policy  # noqa: E402
from tests.e2e.harness.daemon import DaemonProcess  # noqa: E402


def build_micro_bench(workdir: Path) -> Path:
    binary = workdir / "micro"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(REPO / "bench" / "micro.c"), "-lpthread"], check=True)
    return binary


def bench_cgroups(*names: str) -> tuple[Path, dict[str, Path]]:
    """A cgroup of the bench's own (removed at the end) and a child per name."""
    root = cgroup2_mount() / f"enforcer-bench-{os.getpid()}"
    groups = {name: root / name for name in names}
    for path in groups.values():
        path.mkdir(parents=True)
    return root, groups


def exec_policy(sandbox: str, cgroup: Path, workdir: Path, micro: Path, n: int) -> dict:
    """n exec entries: the two programs the bench runs, ten directories, and files made for it."""
    files = workdir / "exec-entries"
    files.mkdir(exist_ok=True)
    dirs = []
    for i in range(10):
        (files / f"d{i}").mkdir(exist_ok=True)
        dirs.append(f"{files}/d{i}/")
    paths = []
    for i in range(n - 2 - len(dirs)):
        path = files / f"tool-{i:04d}"
        path.touch(mode=0o755)
        paths.append(str(path))
    return {"sandbox": sandbox, "target": {"cgroup": str(cgroup)},
            "exec": {"default": "deny", "allow": [str(micro), "/usr/bin/true", *dirs, *paths]}}


def ns_per_op(binary: Path, cgroup: Path, op: str, count: int) -> float:
    """Run bench/micro.c's ``op`` (udp, tcp, spawn) ``count`` times in ``cgroup``."""
    out = subprocess.run([str(binary), op, str(count)], capture_output=True, text=True, check=True,
                         preexec_fn=lambda: move_pid(0, cgroup))
    return float(out.stdout)


def rules_policy(sandbox: str, cgroup: Path, n: int) -> dict:
    allow = [{"to": "127.0.0.1", "protocol": "udp"}, {"to": "127.0.0.1", "protocol": "tcp"}]
    allow += [{"to": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", "ports": [443], "protocol": "tcp"}
              for i in range(n - len(allow))]
    return {"sandbox": sandbox, "target": {"cgroup": str(cgroup)}, "network": {"default": "deny", "allow": allow}}


def measure_stream(binary: Path, socket_path: str, cgroup: Path, rate: int, seconds: float) -> dict[str, float]:
    """Refuse at ``rate``/s (0: flat out) in ``cgroup`` while one client follows the
    stream; what the client got, what the kernel counted, and the latencies."""
    from enforcer.client import Enforcer

    sandbox = cgroup.name
    latencies: list[int] = []
    times: list[float] = []
    delivered = [0]
    skipped = [0]  # fell out of retention before this client read them (gap records)
    stop = threading.Event()
    with Enforcer(socket_path) as enf:
        enf.apply({"sandbox": sandbox, "target": {"cgroup": str(cgroup)}})  # default deny: every sendto refused
        def follow() -> None:
            with Enforcer(socket_path) as stream:
                for batch in stream.denials(sandboxes=[sandbox], follow=True):
                    now_wall, now_mono = time.time_ns(), time.monotonic()
                    for event in batch.denials:
                        latencies.append(now_wall - event.time_unix_ns)
                    delivered[0] += len(batch.denials)
                    skipped[0] += batch.gap.missed
                    times.append(now_mono)
                    if stop.is_set():
                        return

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        time.sleep(0.3)
        subprocess.run([str(binary), "refuse", str(rate), str(seconds)], check=True, capture_output=True,
                       preexec_fn=lambda: move_pid(0, cgroup))
        deadline = time.monotonic() + 30
        while True:
            stats = enf.stats(sandbox)
            if delivered[0] + skipped[0] + stats.events_lost >= stats.sendmsg.refused or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        stop.set()
        enf.remove(sandbox)
    span = (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return {
        "refused": stats.sendmsg.refused,
        "delivered": delivered[0],
        "lost": stats.events_lost,
        "skipped": skipped[0],
        "per_second": delivered[0] / span if span and span > 0 else float("nan"),
        "p50_ms": percentile([v / 1e6 for v in latencies], 50) if latencies else float("nan"),
        "p99_ms": percentile([v / 1e6 for v in latencies], 99) if latencies else float("nan"),
    }


def print_stream_results(binary: Path, workdir: Path, root: Path) -> None:
    daemon = DaemonProcess(workdir / "stream")
    (workdir / "stream").mkdir()
    daemon.extra = ("--events-per-sec", "0")
    daemon.start()
    try:
        print("\nDenial stream to one following client (--events-per-sec 0)")
        for name, rate, seconds, target in (("flat-out", 0, 1.0, "delivered >= 50,000/s"),
                                            ("20000/s", 20_000, 5.0, "nothing lost"),
                                            ("1000/s", 1_000, 5.0, "p99 <= 50 ms")):
            cgroup = root / f"stream-{name.replace('/', '-per-')}"
            cgroup.mkdir()
            r = measure_stream(binary, daemon.socket, cgroup, rate, seconds)
            exact = "yes" if r["delivered"] + r["lost"] == r["refused"] else "NO"
            print(f"  {name:9} refused {r['refused']:>9,}  delivered {r['delivered']:>9,}  lost {r['lost']:>9,}  "
                  f"skipped {r['skipped']:,}  "
                  f"delivered+lost==kernel: {exact}  {r['per_second']:>9,.0f}/s  "
                  f"latency p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms  ({target})")
    finally:
        daemon.stop()


def print_host_spawn_cost(binary: Path, workdir: Path, cgroup: Path, rounds: int, spawns: int) -> None:
    """What the programs that are on while any daemon has loaded them (exec,
    fork, exit and cgroup-move tracepoints) cost a fork+exec outside every
    sandbox: each round measures with nothing loaded, then with a daemon up."""
    off: list[float] = []
    on: list[float] = []
    ns_per_op(binary, cgroup, "spawn", spawns // 10)  # warm-up
    for i in range(rounds):
        off.append(ns_per_op(binary, cgroup, "spawn", spawns))
        (workdir / f"host{i}").mkdir()
        proc = DaemonProcess(workdir / f"host{i}")
        proc.start()
        try:
            on.append(ns_per_op(binary, cgroup, "spawn", spawns))
        finally:
            proc.stop()
    base, loaded = statistics.median(off), statistics.median(on)
    print(f"\nfork+exec /bin/true outside every sandbox, {spawns} per round, median of {rounds} rounds")
    print(f"  nothing loaded   {base / 1000:8.1f} us")
    print(f"  daemon loaded    {loaded / 1000:8.1f} us  ratio {loaded / base:5.3f}  added {(loaded - base) / 1000:+.2f} us")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--udp-connects", type=int, default=300_000)
    parser.add_argument("--tcp-connects", type=int, default=5_000)
    parser.add_argument("--applies", type=int, default=100)
    parser.add_argument("--spawns", type=int, default=2_000)
    parser.add_argument("--dns-queries", type=int, default=3_000)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="enforcer-bench-"))
    binary = build_micro_bench(workdir)
    root, groups = bench_cgroups("unguarded", "rules-1", "rules-10000")

    print("Daemon start-up to ready")
    startups = []
    for i in range(3):
        proc = DaemonProcess(workdir / f"start{i}")
        (workdir / f"start{i}").mkdir()
        started = time.monotonic()
        proc.start()
        startups.append(time.monotonic() - started)
        proc.stop()
    print(f"  {' '.join(f'{s:.2f}s' for s in startups)}  median {statistics.median(startups):.2f} s  (target <= 2 s)")

    print_host_spawn_cost(binary, workdir, groups["unguarded"], args.rounds, args.spawns)
    print_stream_results(binary, workdir, root)

    daemon = DaemonProcess(workdir)
    daemon.start()
    try:
        with daemon.client() as enf:
            enf.apply(rules_policy("bench-1", groups["rules-1"], 2))
            enf.apply(rules_policy("bench-10000", groups["rules-10000"], 10_000))

            for proto, count, target in (("udp", args.udp_connects, "added <= 0.4 us at 10,000 rules"),
                                         ("tcp", args.tcp_connects, "<= 1.05x unguarded"),
                                         ("recv", args.udp_connects // 4, "no target: the recvmsg hook")):
                samples: dict[str, list[float]] = {name: [] for name in groups}
                ns_per_op(binary, groups["unguarded"], proto, count // 10)  # warm-up
                for _ in range(args.rounds):
                    for name, path in groups.items():
                        samples[name].append(ns_per_op(binary, path, proto, count))
                base = statistics.median(samples["unguarded"])
                what = "UDP sendto+recvfrom" if proto == "recv" else f"{proto.upper()} connect()"
                print(f"\n{what}, {count} per round, median of {args.rounds} rounds ({target})")
                for name in groups:
                    value = statistics.median(samples[name])
                    added = (value - base) / 1000
                    print(f"  {name:12} {value / 1000:8.3f} us  ratio {value / base:5.3f}  added {added:+.3f} us")

            exec_group = root / "exec-1000"
            exec_group.mkdir()
            enf.apply(exec_policy("bench-exec", exec_group, workdir, binary, 1000))
            spawn_groups = {"unguarded": groups["unguarded"], "exec-1000": exec_group}
            spawns: dict[str, list[float]] = {name: [] for name in spawn_groups}
            ns_per_op(binary, groups["unguarded"], "spawn", args.spawns // 10)  # warm-up
            for _ in range(args.rounds):
                for name, path in spawn_groups.items():
                    spawns[name].append(ns_per_op(binary, path, "spawn", args.spawns))
            base = statistics.median(spawns["unguarded"])
            print(f"\nfork+exec /bin/true, {args.spawns} per round, median of {args.rounds} rounds (<= 1.05x unguarded)")
            for name in spawn_groups:
                value = statistics.median(spawns[name])
                print(f"  {name:12} {value / 1000:8.1f} us  ratio {value / base:5.3f}  added {(value - base) / 1000:+.2f} us")

            print(f"\nApplyPolicy (replace) of a 1,000-rule policy, {args.applies} times (target p99 <= 20 ms)")
            apply_group = root / "apply"
            apply_group.mkdir()
            latencies = []
            for i in range(args.applies):
                doc = rules_policy("bench-apply", apply_group, 1000)
                doc["labels"] = {"i": str(i)}
                policy = parse_policy(doc)  # the caller's own preparation, not the RPC
                started = time.perf_counter()
                enf.apply(policy)
                latencies.append((time.perf_counter() - started) * 1000)
            print(f"  RPC, client to client:  p50 {percentile(latencies, 50):.2f} ms  "
                  f"p99 {percentile(latencies, 99):.2f} ms  max {max(latencies):.2f} ms")
            inside = [e["apply_ms"] for e in daemon.log_events()
                      if e["event"] == "policy_applied" and e["sandbox"] == "bench-apply"]
            print(f"  inside the daemon:      p50 {percentile(inside, 50):.2f} ms  "
                  f"p99 {percentile(inside, 99):.2f} ms  (resolve target, encode, write maps, switch)")
            print(f"\nApplyPolicy (replace) of a 1,000-path exec policy, {args.applies} times (no target; "
                  "each entry is stat-ed and resolved)")
            exec_doc = exec_policy("bench-exec", exec_group, workdir, binary, 1000)
            exec_latencies = []
            for i in range(args.applies):
                exec_doc["labels"] = {"i": str(i)}
                policy = parse_policy(exec_doc)
                started = time.perf_counter()
                enf.apply(policy)
                exec_latencies.append((time.perf_counter() - started) * 1000)
            print(f"  RPC, client to client:  p50 {percentile(exec_latencies, 50):.2f} ms  "
                  f"p99 {percentile(exec_latencies, 99):.2f} ms")
            for sandbox in ("bench-1", "bench-10000", "bench-apply", "bench-exec"):
                enf.remove(sandbox)
    finally:
        daemon.stop()
        remove_cgroup(root)
    dns_bench.print_results(args.dns_queries, 3.0, 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
