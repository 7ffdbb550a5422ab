"""DNS forwarder cost: what resolving by name adds per query, and how many
queries per second one sandbox's forwarder sustains.

A process in a sandbox cgroup asks for an allowed name, one query at a time,
through the forwarder (it addresses 127.0.0.156:53, which the kernel redirects)
and, as the baseline in the same run, directly from an unguarded cgroup to the
same upstream test server. Then it keeps 64 queries outstanding for a few
seconds through the forwarder. Targets: p99 added <= 2 ms, >= 5,000 queries/s.

    python -m bench.dns [--queries N] [--seconds S] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# It forks measuring processes while gRPC channels are open (see tests/conftest.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from enforcer.cgroupfs import cgroup2_mount, move_pid, remove_cgroup  # noqa: E402
from tests.e2e.harness.daemon import DaemonProcess  # noqa: E402

UPSTREAM = "127.0.0.155"   # the test server, on the host's loopback
ADDRESSED = "127.0.0.156"  # what the sandboxed client asks (nothing listens there)
NAME = "pypi.bench.test"

# The upstream answers from a prepared response (only the id changes): the
# baseline measures the client and the kernel, not a slow server.
SERVER = textwrap.dedent("""
    import socket, sys, dns.message, dns.rrset
    query = dns.message.make_query(sys.argv[2], "A")
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(sys.argv[2] + ".", 300, "IN", "A", "127.0.0.10"))
    wire = response.to_wire()[2:]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((sys.argv[1], 0))
    print(s.getsockname()[1], flush=True)
    while True:
        data, peer = s.recvfrom(4096)
        s.sendto(data[:2] + wire, peer)
""")

# mode latency: N sequential queries, each RTT in us; mode rate: a window of
# outstanding queries for S seconds, answers/s.
CLIENT = textwrap.dedent("""
    import json, socket, sys, time, dns.message
    mode, server, port, name, amount = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    wire = bytearray(dns.message.make_query(name, "A").to_wire())
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.connect((server, port))
    s.settimeout(2)
    def ask(i):
        wire[0:2] = (i & 0xffff).to_bytes(2, "big")
        s.send(wire)
    if mode == "latency":
        rtts = []
        for i in range(int(amount)):
            started = time.perf_counter_ns()
            ask(i)
            while True:
                reply = s.recv(4096)
                if int.from_bytes(reply[:2], "big") == i & 0xffff:
                    break
            rtts.append((time.perf_counter_ns() - started) / 1000)
        print(json.dumps(rtts))
    else:
        window, sent, answered, lost = 64, 0, 0, 0
        deadline = time.monotonic() + amount
        for _ in range(window):
            ask(sent); sent += 1
        s.settimeout(0.5)
        started = time.monotonic()
        while time.monotonic() < deadline:
            try:
                s.recv(4096)
                answered += 1
            except TimeoutError:
                lost += window  # refill the window
            ask(sent); sent += 1
        print(json.dumps({"answered": answered, "seconds": time.monotonic() - started, "sent": sent}))
""")


def run_client(cgroup: Path, *args: str) -> object:
    done = subprocess.run([sys.executable, "-c", CLIENT, *args], capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: move_pid(0, cgroup))
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def measure(queries: int, seconds: float, rounds: int) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="enforcer-bench-dns-"))
    root = cgroup2_mount() / f"enforcer-bench-dns-{os.getpid()}"
    unguarded, guarded = root / "unguarded", root / "guarded"
    for path in (unguarded, guarded):
        path.mkdir(parents=True)
    server = subprocess.Popen([sys.executable, "-c", SERVER, UPSTREAM, NAME], stdout=subprocess.PIPE, text=True)
    daemon = DaemonProcess(workdir)
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        daemon.start()
        with daemon.client() as enf:
            enf.apply({"sandbox": "bench-dns", "target": {"cgroup": str(guarded)},
                       "network": {"allow": [{"to": NAME, "ports": [443]}],
                                   "dns": {"upstream": [f"{UPSTREAM}:{port}"]}}})
            direct: list[float] = []
            forwarded: list[float] = []
            run_client(guarded, "latency", ADDRESSED, "53", NAME, "200")  # warm-up
            for _ in range(rounds):
                direct += run_client(unguarded, "latency", UPSTREAM, port, NAME, str(queries))  # type: ignore[operator]
                forwarded += run_client(guarded, "latency", ADDRESSED, "53", NAME, str(queries))  # type: ignore[operator]
            rates = [run_client(guarded, "rate", ADDRESSED, "53", NAME, str(seconds)) for _ in range(rounds)]
            direct_rates = [run_client(unguarded, "rate", UPSTREAM, port, NAME, str(seconds)) for _ in range(rounds)]
            refused = enf.stats("bench-dns").dns.refused
            enf.remove("bench-dns")
    finally:
        daemon.stop()
        server.kill()
        remove_cgroup(root)
    per_second = [r["answered"] / r["seconds"] for r in rates]  # type: ignore[index]
    direct_per_second = [r["answered"] / r["seconds"] for r in direct_rates]  # type: ignore[index]
    return {
        "direct_p50": percentile(direct, 50), "direct_p99": percentile(direct, 99),
        "forwarded_p50": percentile(forwarded, 50), "forwarded_p99": percentile(forwarded, 99),
        "qps": statistics.median(per_second), "direct_qps": statistics.median(direct_per_second),
        "refused": refused, "samples": len(forwarded),
    }


def print_results(queries: int, seconds: float, rounds: int) -> None:
    r = measure(queries, seconds, rounds)
    print(f"\nDNS through the forwarder vs. direct to the same upstream, {int(r['samples'])} sequential queries "
          f"each ({rounds} rounds), then 64 outstanding for {seconds:g} s (targets: p99 added <= 2 ms, "
          ">= 5,000 queries/s)")
    print(f"  direct      p50 {r['direct_p50']:7.0f} us  p99 {r['direct_p99']:7.0f} us  "
          f"{r['direct_qps']:8.0f} queries/s")
    print(f"  forwarded   p50 {r['forwarded_p50']:7.0f} us  p99 {r['forwarded_p99']:7.0f} us  "
          f"{r['qps']:8.0f} queries/s")
    print(f"  added       p50 {r['forwarded_p50'] - r['direct_p50']:+7.0f} us  "
          f"p99 {r['forwarded_p99'] - r['direct_p99']:+7.0f} us  ratio p50 "
          f"{r['forwarded_p50'] / r['direct_p50']:.2f}  (refused: {int(r['refused'])})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print_results(args.queries, args.seconds, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
