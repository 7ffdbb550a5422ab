"""A trainer's rollout loop over pooled sandboxes, with Enforcer's signal in the reward.

Each pooled sandbox (a cgroup) gets its policy once. Per episode the trainer
relabels the sandbox (no re-apply), runs the agent in it, reads the exact counts
since the last reset, turns them into a reward penalty and a keep/drop decision
(enforcer.rl), and resets. A second thread follows the denial stream, where every
denial carries the episode it happened in. Run as root with a daemon running:

    python examples/trainer_loop.py [--socket PATH] [--episodes 6] [--pool 2]

The stand-in agent behaves well, makes a mistake (one refused datagram to
127.0.0.1:3333) or tries to start a miner (a copy of true named xmrig), in turn.
It only ever sees EPERM or its child killed; the trainer sees why.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# The loop forks agents into their sandboxes while it streams over gRPC: keep
# gRPC's fork handlers (for children that go on using gRPC) out of those forks.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from enforcer import rl
from enforcer.cgroupfs import cgroup2_mount, create_cgroup, move_pid, remove_cgroup
from enforcer.client import Enforcer

PY = os.path.realpath(sys.executable)
AGENT = """
import socket, subprocess, sys
behaviour, miner = sys.argv[1], sys.argv[2]
if behaviour == "mistake":
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"share", ("127.0.0.1", 3333))
    except OSError as e:
        print(f"    agent: sendto 127.0.0.1:3333: {e.strerror}")
elif behaviour == "breakout":
    try:  # killed before it runs (tracepoint), or refused with EPERM (BPF-LSM)
        status = subprocess.run([miner, "--donate-level", "1"]).returncode
        print(f"    agent: {miner} exited {status}")
    except PermissionError as e:
        print(f"    agent: {miner}: {e.strerror}")
subprocess.run(["/usr/bin/true"], check=True)
"""
BEHAVIOURS = ("well-behaved", "mistake", "breakout")


def policy(sandbox: str, cgroup: Path) -> dict:
    return {
        "sandbox": sandbox,
        "target": {"cgroup": str(cgroup)},
        "labels": {"run": "example"},
        "network": {"default": "deny"},
        "exec": {"default": "deny", "allow": [PY, "/usr/bin/true"]},
        "escalate": {"after": 20, "within": "10s", "action": "quarantine"},
    }


def follow_denials(socket_path: str | None, stop: threading.Event) -> None:
    with Enforcer(socket_path) as stream:
        for batch in stream.denials(labels={"run": "example"}, follow=True):
            for d in batch.denials:
                what = d.exec.path if d.HasField("exec") else f"{d.destination.address}:{d.destination.port}"
                print(f"    trainer <- denial #{d.seq} {d.sandbox} episode={d.labels['episode']} "
                      f"{'exec' if d.HasField('exec') else 'network'} {what}", flush=True)
            if stop.is_set():
                return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket")
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--pool", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="enforcer-example-"))
    miner = work / "xmrig"
    shutil.copy2("/usr/bin/true", miner)
    root = create_cgroup(cgroup2_mount() / f"enforcer-example-{os.getpid()}")
    pool = [f"pool-{os.getpid()}-{i}" for i in range(args.pool)]
    stop = threading.Event()
    kept = dropped = 0
    try:
        with Enforcer(args.socket) as enf:
            for sandbox in pool:
                enf.apply(policy(sandbox, create_cgroup(root.path / sandbox).path))
            threading.Thread(target=follow_denials, args=(args.socket, stop), daemon=True).start()
            for episode in range(args.episodes):
                sandbox = pool[episode % len(pool)]
                behaviour = BEHAVIOURS[episode % len(BEHAVIOURS)]
                enf.set_labels(sandbox, episode=str(episode), step="0")
                enf.stats(sandbox, reset=True)  # the episode starts counting from zero
                print(f"episode {episode} on {sandbox}: agent is {behaviour}", flush=True)
                subprocess.run([PY, "-c", AGENT, behaviour, str(miner)], check=True,
                               preexec_fn=lambda s=sandbox: move_pid(0, root.path / s))
                summary = enf.stats(sandbox, reset=True)
                applied = enf.get(sandbox)
                outcome = rl.judge(summary, escalated=applied.quarantined or applied.frozen)
                reward = 1.0 - outcome.penalty
                kept, dropped = (kept + 1, dropped) if outcome.keep else (kept, dropped + 1)
                verdict = "keep" if outcome.keep else "drop (" + "; ".join(outcome.reasons) + ")"
                counted = ", ".join(f"{k} {n}" for k, n in outcome.counts.items() if n) or "no denials"
                print(f"  -> {counted}: reward {reward:.2f}, {verdict}", flush=True)
            stop.set()
            for sandbox in pool:
                enf.remove(sandbox)
    finally:
        stop.set()
        remove_cgroup(root.path)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{kept} trajectories kept, {dropped} dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
