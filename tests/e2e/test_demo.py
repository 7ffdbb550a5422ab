"""`make demo` keeps doing what the README says: the tunnel and the pool
connection refused in the kernel and reported, the miner binary killed before it
runs, the GPU node refused, the mirror reachable, the daemon's socket out of the
agent's reach, and nothing left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel  # the outcome depends on the kernel: runs on each (make test-kernels)

REPO = Path(__file__).resolve().parents[2]


def test_demo_replays_rome_and_cleans_up():
    result = subprocess.run([sys.executable, "-m", "enforcer.demo"], capture_output=True, text=True, timeout=180,
                            cwd=REPO)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "tunnel up" in out.split("Starting the Enforcer daemon")[0]  # it works without Enforcer
    assert "package mirror answered: HTTP 200" in out
    assert "pypi.org resolves to 10.77.0.10 (the host's resolver, redirected)" in out
    assert "lookup of c2.tunnel-attacker.example failed" in out
    assert "rollout-17 refused dns c2.tunnel-attacker.example A/udp (not_allowed)" in out
    assert "dns      refused        1" in out or "dns      refused        2" in out  # glibc may ask twice
    assert "ssh: connect to host 10.77.0.22 port 22: Operation not permitted" in out
    assert "miner: connect to 10.77.0.33:3333 failed: Operation not permitted" in out
    assert "rollout-17 refused connect 10.77.0.22:22/tcp" in out and "comm=ssh" in out
    assert "rollout-17 refused connect 10.77.0.33:3333/tcp" in out
    assert "connect  refused        2" in out
    assert "--donate-level 1: killed by the kernel" in out or "--donate-level 1: exec refused by the kernel (EPERM)" in out
    assert "rollout-17 refused exec " in out and "/xmrig (not_allowed) argv=[" in out
    assert "nvidia0: Operation not permitted" in out
    assert "rollout-17 refused device /dev/nvidia0 (nvidia) 195:0 access=rw" in out
    assert "exec     refused        1" in out and "device   refused        1" in out
    # The agent runs unprivileged and cannot reach the daemon, not even through /proc/<pid>/root.
    assert out.count("enforcer.sock: Permission denied") == 2 and "connected" not in out
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "enf-demo" not in namespaces
    links = subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    assert "enfd-" not in links
