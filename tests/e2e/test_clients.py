"""The asyncio client and the trainer example, against the real daemon."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness.env import REPO
from tests.e2e.harness.network import HOST4
from tests.e2e.test_network import policy, sendto

pytestmark = pytest.mark.kernel  # the outcome depends on the kernel: runs on each (make test-kernels)


def test_asyncio_client_has_the_same_surface(daemon, make_cgroup, sandbox_id, probe):
    from enforcer.aio import Enforcer, EnforcerError

    cgroup = make_cgroup()

    async def scenario() -> None:
        async with Enforcer(daemon.socket) as enf:
            await enf.wait_ready(10)
            await enf.apply(policy(sandbox_id, cgroup))
            await enf.set_labels(sandbox_id, episode="3")
            await asyncio.to_thread(probe, cgroup, {**sendto(HOST4, 9), "repeat": 2})
            events = []
            for _ in range(100):
                events = [e async for e in enf.denial_events(sandboxes=[sandbox_id])]
                if len(events) == 2:
                    break
                await asyncio.sleep(0.05)
            assert [e.labels["episode"] for e in events] == ["3", "3"]
            batches = [b async for b in enf.denials(sandboxes=[sandbox_id], since=events[-1].seq + 1)]
            assert batches == []
            assert (await enf.stats(sandbox_id, reset=True)).sendmsg.refused == 2
            assert (await enf.stats(sandbox_id)).sendmsg.refused == 0
            assert (await enf.status()).exec_enforcement in ("lsm", "tracepoint")
            assert sandbox_id in [a.policy.sandbox for a in await enf.list()]
            await enf.release(sandbox_id)
            await enf.remove(sandbox_id)
            try:
                await enf.get(sandbox_id)
            except EnforcerError as exc:
                assert exc.code.name == "NOT_FOUND"
            else:
                raise AssertionError("get of a removed sandbox succeeded")

    asyncio.run(scenario())


def test_trainer_example_runs(daemon):
    env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(Path(REPO) / "examples" / "trainer_loop.py"), "--socket",
                             daemon.socket, "--episodes", "6", "--pool", "2"],
                            capture_output=True, text=True, timeout=120, env=env)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "episode 1 on" in out and "-> sendmsg 1: reward 0.90, keep" in out
    assert "-> exec 1: reward 0.00, drop (1 exec denials (drop at 1))" in out
    assert "episode=5 exec" in out  # the streamed denial carries the episode it happened in
    assert "2 trajectories kept" not in out and "4 trajectories kept, 2 dropped" in out
