"""`make demo-container` does what the README says: the ROME replay with the
agent in a real Podman container that the OCI hook guarded from its first
instruction, every refusal reported with the container's labels, and nothing
left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_the_replay_in_a_container_is_refused_reported_and_cleaned_up(podman_cli):
    result = subprocess.run([sys.executable, "-m", "enforcer.demo", "--container"], capture_output=True, text=True,
                            timeout=240, cwd=REPO)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "the OCI hook applied" in out and "before its first instruction" in out
    assert "package mirror answered: HTTP 200" in out
    assert "rollout-17 refused dns c2.tunnel-attacker.example A/udp (not_allowed)" in out
    assert "ssh: connect to host 10.77.0.22 port 22: Operation not permitted" in out
    assert "miner: connect to 10.77.0.33:3333 failed: Operation not permitted" in out
    assert "--donate-level 1: killed by the kernel" in out or "--donate-level 1: exec refused by the kernel" in out
    assert "rollout-17 refused device /dev/nvidia0 (nvidia) 195:0 access=rw" in out
    assert "open /dev/nvidia0: Operation not permitted" in out
    denials = [line for line in out.splitlines() if "trainer <- denial" in line]
    assert len(denials) >= 5 and all("labels=container=" in line and "run=ppo-7" in line for line in denials)
    for counter in ("connect  refused        2", "exec     refused        1", "device   refused        1"):
        assert counter in out
    assert "enf-demo" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "enforcer-demo" not in Path("/proc/mounts").read_text()
