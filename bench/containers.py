"""`make bench-containers`: what guarding adds to a container's start.

`docker run --rm --network none <busybox> true` and the same under Podman,
timed from the CLI call to its exit: plain (the baseline, measured in the same
run, interleaved), under a guarded parent (`--cgroup-parent`: no hook, the
policy is already in the kernel), and through the OCI hook (Docker's
`--runtime enforcer`, Podman's hooks.d: a policy applied per container before
its first instruction, removed at poststop). The median of each is printed with
its ratio to the baseline and the milliseconds it adds.

Then --rollouts (default 1,000) `run --rm` rollouts through the hook, each
refused one connect: the daemon's sandboxes, the pinned maps' keys and the
runtime's cgroups are counted before and after (nothing may be left behind).

Uses the tests' private dockerd and Podman set-up (tests/e2e/runtimes.py) and a
daemon of its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from enforcer.cgroupfs import cgroup2_mount, remove_cgroup  # noqa: E402
from tests.e2e.conftest import DaemonProcess  # noqa: E402
from tests.e2e.runtimes import (  # noqa: E402
    HOOK_POLICIES,
    IMAGE,
    DockerDaemon,
    Runtime,
    podman,
    point_hooks_at,
)

POLICY = '{"labels": {"bench": "containers"}, "network": {"default": "deny"}}'


def variants(runtime: Runtime, parent: str) -> dict[str, list[str]]:
    hook = (["--annotation", "enforcer.policy=bench"] if runtime.name == "podman"
            else ["--runtime", "enforcer", "-e", "ENFORCER_POLICY=bench"])
    return {"plain": [], "guarded parent": [f"--cgroup-parent={parent}"], "OCI hook": hook}


def measure(runtime: Runtime, parent: str, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in variants(runtime, parent)}
    for flags in variants(runtime, parent).values():  # warm-up: the first start of each costs more
        runtime.run("run", "--rm", "--network", "none", *flags, IMAGE, "true")
    for _ in range(rounds):
        for name, flags in variants(runtime, parent).items():
            started = time.perf_counter()
            runtime.run("run", "--rm", "--network", "none", *flags, IMAGE, "true")
            samples[name].append(time.perf_counter() - started)
    return samples


def report(runtime: Runtime, samples: dict[str, list[float]]) -> None:
    base = statistics.median(samples["plain"])
    print(f"\n{runtime.name} run --rm --network none busybox true ({len(samples['plain'])} rounds, medians)")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:15} {median * 1000:7.0f} ms  {median / base:5.2f}x  {(median - base) * 1000:+6.0f} ms")


def rollouts(runtime: Runtime, count: int, pin_dir: Path, list_sandboxes: Any) -> None:
    from tests.e2e.pinned_maps import map_entries

    cgroups = cgroup2_mount() / ("docker" if runtime.name == "docker" else "libpod_parent")

    def counts() -> dict[str, int]:
        return {"sandboxes": len(list_sandboxes()), "cgroups": sum(1 for p in cgroups.rglob("*") if p.is_dir()),
                **{f"map {name}": n for name, n in map_entries(pin_dir).items()}}

    before = counts()
    started, refused = time.monotonic(), 0
    for _ in range(count):
        done = runtime.run("run", "--rm", "--network", "none", *variants(runtime, "")["OCI hook"], IMAGE,
                           "nc", "127.0.0.1", "9", check=False)
        refused += "Operation not permitted" in done.stdout + done.stderr
    after = counts()
    changed = {k: (before.get(k), after.get(k)) for k in {*before, *after} if before.get(k) != after.get(k)}
    print(f"\n{count} {runtime.name} rollouts through the hook in {time.monotonic() - started:.0f} s: "
          f"{refused} refused their connect; left behind: {changed or 'nothing'} "
          f"(sandboxes {after['sandboxes']}, cgroups {after['cgroups']}, "
          f"sandbox map keys {after.get('map sandboxes')})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rollouts", type=int, default=1000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="enforcer-bench-"))
    parent_path = cgroup2_mount() / f"enforcer-bench-{os.getpid()}"
    parent = "/" + str(parent_path.relative_to(cgroup2_mount()))
    dockerd = DockerDaemon()
    daemon = DaemonProcess(workdir)
    daemon.start()
    try:
        point_hooks_at(daemon.socket)
        (HOOK_POLICIES / "bench.json").write_text(POLICY)
        with daemon.client() as enf:
            enf.apply({"sandbox": "bench-parent", "target": {"cgroup": str(parent_path), "create": True},
                       "network": {"default": "deny"}})
        docker = dockerd.start()
        for runtime in (docker, podman(cgroup2_mount())):
            runtime.import_image()
            report(runtime, measure(runtime, parent, args.rounds))
        with daemon.client() as enf:
            for runtime in (docker, podman(cgroup2_mount())):
                rollouts(runtime, args.rollouts, daemon.pin_dir, enf.list)
    finally:
        dockerd.stop()
        daemon.stop()
        remove_cgroup(parent_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
