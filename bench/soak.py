"""`make soak` (not CI): can Enforcer hang or leak on this kernel? For
SOAK_MINUTES (default 30) a real daemon goes through cycles of

  apply/replace/remove churn   20 sandboxes applied, each replaced, then removed
  a flood                      a sandboxed process refused 20,000 times (loopback
                               connects); the stats must count each one
  a take-over                  every 300th cycle (about 3 minutes): SIGTERM (or,
                               every other time, SIGKILL) with enforcement kept,
                               then a new daemon takes over

while a guarded process keeps being refused in the background the whole time.
Before and after: the kernel's BPF programs, maps and links, our bpffs pins,
cgroups under the cgroup2 mount; per cycle, the daemon's RSS and open fds at
the same point of the cycle, judged per daemon. Ends with a table; exits 1 on
a leak, a refused call that got through, a miscount, or a lockup/stall in the
kernel log.

    python -m bench.soak [--minutes M] [--restart-every CYCLES]

Only loopback is ever addressed (127.0.0.1, where the policy refuses)."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # it forks with channels open (tests/conftest.py)

from enforcer.cgroupfs import cgroup2_mount, move_pid, remove_cgroup  # noqa: E402
from tests.e2e.harness.daemon import DaemonProcess  # noqa: E402
from tests.e2e.harness.env import bpffs  # noqa: E402
from tests.kernels import watch  # noqa: E402

PROBE = REPO / "tests" / "e2e" / "probe.py"
LOOPBACK = "127.0.0.1"
REFUSED_PORT = 9          # no rule allows it: every attempt is EPERM
SANDBOXES = 20
FLOOD = 20_000


def kernel_objects() -> dict[str, int]:
    """How many BPF programs, maps and links the kernel holds (all owners)."""
    from bcc.libbcc import lib

    counts = {}
    for kind in ("prog", "map", "link"):
        next_id = getattr(lib, f"bpf_{kind}_get_next_id")
        current, found = ctypes.c_uint32(0), 0
        while next_id(current, ctypes.byref(current)) == 0:
            found += 1
        counts[f"bpf {kind}s"] = found
    return counts


def tree_size(root: Path, prefix: str) -> int:
    return sum(1 for _ in root.glob(f"{prefix}*/**")) if root.exists() else 0


def snapshot(cgroups: Path) -> dict[str, int]:
    return {**kernel_objects(), "bpffs pins (ours)": tree_size(bpffs(), "enforcer-soak"),
            "cgroups (ours)": tree_size(cgroups.parent, cgroups.name)}


def settled_snapshot(cgroups: Path, before: dict[str, int], seconds: float = 30) -> dict[str, int]:
    """The snapshot once the kernel has freed what was let go (at most
    ``seconds``): programs and maps are freed after an RCU grace period, from a
    work queue, not at the close or unpin (seen: 2 programs and 10 maps still
    counted right after an uninstall, none a moment later)."""
    deadline = time.monotonic() + seconds
    current = snapshot(cgroups)
    while current != before and time.monotonic() < deadline:
        time.sleep(1)
        current = snapshot(cgroups)
    return current


def process_usage(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open fds) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def probe(cgroup: Path, op: dict, timeout: float = 600) -> list[str]:
    done = subprocess.run([sys.executable, str(PROBE)], input=json.dumps([op]), capture_output=True, text=True,
                          preexec_fn=lambda: move_pid(0, cgroup), timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"probe failed: {done.stderr}")
    return list(json.loads(done.stdout))


def refused_connects(**repeat: object) -> dict:
    """The probe op every refusal of the soak is made of: a loopback connect no rule allows."""
    return {"op": "connect", "proto": "tcp", "addr": LOOPBACK, "port": REFUSED_PORT, **repeat}


def policy(sandbox: str, cgroup: Path, port: int) -> dict:
    return {"sandbox": sandbox, "target": {"cgroup": str(cgroup)},
            "network": {"default": "deny", "allow": [{"to": LOOPBACK, "ports": [port]}]}}


class Background:
    """A guarded process refused over and over for the whole soak: any attempt
    that is not EPERM (a gap during a restart) is a failure."""

    def __init__(self, cgroup: Path, workdir: Path, seconds: float) -> None:
        self.stop_file = workdir / "background-stop"
        self.result: list[str] = []
        op = refused_connects(repeat=10**9, until=str(self.stop_file))
        self.thread = threading.Thread(target=lambda: self.result.extend(probe(cgroup, op, seconds + 600)))
        self.thread.start()

    def finish(self) -> str:
        self.stop_file.touch()
        self.thread.join(timeout=120)
        return self.result[0] if self.result else "no result"


def churn(proc: DaemonProcess, cgroups: list[Path], cycle: int) -> None:
    with proc.client() as enf:
        for index, cgroup in enumerate(cgroups):
            enf.apply(policy(f"churn-{index}", cgroup, 1000 + cycle % 100))
        for index, cgroup in enumerate(cgroups):
            enf.apply(policy(f"churn-{index}", cgroup, 2000 + cycle % 100))  # a replace
        for index in range(len(cgroups)):
            enf.remove(f"churn-{index}")


def flood(proc: DaemonProcess, cgroup: Path) -> str | None:
    """A problem, or None: every refusal refused and counted once."""
    with proc.client() as enf:
        before = enf.stats("flood").connect.refused
    result = probe(cgroup, refused_connects(repeat=FLOOD))
    with proc.client() as enf:
        counted = enf.stats("flood").connect.refused - before
    if result != [f"EPERM*{FLOOD}"] or counted != FLOOD:
        return f"flood: {result}, counted {counted} of {FLOOD}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "30")))
    parser.add_argument("--restart-every", type=int, default=300, metavar="CYCLES",
                        help="a take-over every this many cycles (default 300)")
    args = parser.parse_args(argv)
    # SIGTERM (a CI or an operator stopping it) unwinds like ^C: the clean-up below runs.
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="enforcer-soak-"))
    cgroups = cgroup2_mount() / f"enforcer-soak-{os.getpid()}"
    kernel_log = watch.host_kernel_log()
    before = snapshot(cgroups)
    cgroups.mkdir()
    sandbox_cgroups = [cgroups / f"churn-{i}" for i in range(SANDBOXES)]
    flood_cgroup, background_cgroup = cgroups / "flood", cgroups / "background"
    for path in [*sandbox_cgroups, flood_cgroup, background_cgroup]:
        path.mkdir()
    proc = DaemonProcess(workdir, "--events-per-sec", "1000")
    proc.pin_dir = bpffs() / f"enforcer-soak-{os.getpid()}"
    problems: list[str] = []
    usage: list[list[tuple[int, int, int]]] = [[]]  # per daemon: (cycle, RSS KiB, fds) after churn + flood
    restarts = 0
    started = time.monotonic()
    deadline = started + args.minutes * 60
    proc.start()
    with proc.client() as enf:
        enf.apply(policy("flood", flood_cgroup, 1))
        enf.apply(policy("background", background_cgroup, 1))
    background = Background(background_cgroup, workdir, args.minutes * 60)
    cycle = 0
    try:
        while time.monotonic() < deadline and not problems:
            cycle += 1
            churn(proc, sandbox_cgroups, cycle)
            problem = flood(proc, flood_cgroup)
            if problem:
                problems.append(f"cycle {cycle}: {problem}")
            assert proc.proc is not None
            usage[-1].append((cycle, *process_usage(proc.proc.pid)))
            _, rss, fds = usage[-1][-1]
            if cycle % args.restart_every == 0:
                proc.stop(signal.SIGKILL if restarts % 2 else signal.SIGTERM, keep_enforcing=True)
                proc.start()
                restarts += 1
                usage.append([])
            print(f"soak: cycle {cycle}, {time.monotonic() - started:.0f} s, restarts {restarts}, "
                  f"daemon RSS {rss / 1024:.1f} MiB, fds {fds}", flush=True)
    finally:
        background_result = background.finish()
        proc.stop()  # uninstall: the end of enforcement must leave nothing behind
        for path in [*sandbox_cgroups, flood_cgroup, background_cgroup, cgroups]:
            remove_cgroup(path)
    if not background_result.startswith("EPERM*") or "," in background_result:
        problems.append(f"background: {background_result} (an attempt was not refused)")
    after = settled_snapshot(cgroups, before)
    trouble = watch.kernel_trouble(watch.new_lines(kernel_log, watch.host_kernel_log()))
    if trouble:
        problems.append("kernel log: " + " / ".join(trouble[:3]))
    print(render(args.minutes, time.monotonic() - started, cycle, restarts, background_result, before, after, usage))
    problems += [f"leak: {name} {before[name]} -> {after[name]}" for name in before if after[name] != before[name]]
    for number, lifetime in enumerate(usage, 1):
        problems += [f"daemon {number}: {problem}" for problem in flat_usage(lifetime)]
    for problem in problems:
        print(f"soak: FAILED: {problem}")
    return 1 if problems else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def flat_usage(lifetime: list[tuple[int, int, int]]) -> list[str]:
    """One daemon, the same point of every cycle: after its first third (the
    retention buffer of 65,536 denials filling, the allocator settling), the
    highest RSS of its last third must not be above that of its middle third
    by more than 5%, nor its fds above."""
    if len(lifetime) < 150:
        # Too short to judge: the retention buffer is still filling (measured:
        # RSS rises for the first 100-300 cycles; 40-cycle daemons all "grew").
        return []
    third = len(lifetime) // 3
    middle, last = lifetime[third:2 * third], lifetime[-third:]
    problems = []
    if max(r for _, r, _ in last) > max(r for _, r, _ in middle) * 1.05:
        problems.append(f"RSS grew: {max(r for _, r, _ in middle) / 1024:.1f} MiB, then "
                        f"{max(r for _, r, _ in last) / 1024:.1f} MiB")
    if max(f for *_, f in last) > max(f for *_, f in middle):
        problems.append("open fds grew")
    return problems


def render(minutes: float, seconds: float, cycles: int, restarts: int, background: str,
           before: dict[str, int], after: dict[str, int], usage: list[list[tuple[int, int, int]]]) -> str:
    refused = int(background.split("*")[1]) if background.startswith("EPERM*") and "," not in background else 0
    lines = [f"# Soak ({minutes:g} min asked, {seconds / 60:.1f} min run): {cycles} cycles, {restarts} take-overs, "
             f"{cycles * SANDBOXES * 2} applies, {cycles * SANDBOXES} removes, {cycles * FLOOD:,} flood refusals, "
             f"{refused:,} background refusals", "",
             "| counted | before | after |", "|---|---|---|"]
    lines += [f"| {name} | {before[name]} | {after[name]} |" for name in before]
    lines += ["", "| daemon | cycles | RSS first | RSS max, middle third | RSS max, last third | fds min-max |",
              "|---|---|---|---|---|---|"]
    for number, lifetime in enumerate(usage, 1):
        if not lifetime:
            continue
        third = max(1, len(lifetime) // 3)
        rss, fds = [r for _, r, _ in lifetime], [f for *_, f in lifetime]
        lines.append(f"| {number} | {len(lifetime)} | {rss[0] / 1024:.1f} MiB "
                     f"| {max(rss[third:2 * third] or rss) / 1024:.1f} MiB | {max(rss[-third:]) / 1024:.1f} MiB "
                     f"| {min(fds)}-{max(fds)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
