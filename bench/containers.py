"""`make bench-containers`: what guarding adds to a container's start.

`docker run --rm --network none <busybox> true` and the same under Podman,
timed from the CLI call to its exit: plain (the baseline, measured in the same
run, interleaved), under a guarded parent (`--cgroup-parent`: no hook, the
policy is already in the kernel), through the OCI hook (Docker's
`--runtime enforcer`, Podman's hooks.d: a policy applied per container before
its first instruction, removed at poststop), and in a guarded parent with an
exec allowlist through the hook (the container added to the parent's sandbox:
its entries resolved in the container's root, the policy applied again; taken
out at poststop). The median of each is printed with its ratio to the baseline
and the milliseconds it adds.

Then --rollouts (default 1,000) `run --rm` rollouts through each hook way, each
refused one connect: the daemon's sandboxes and the containers they hold, the
pinned maps' keys and the runtime's cgroups are counted before and after
(nothing may be left behind).

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
from tests.e2e.harness.daemon import DaemonProcess  # noqa: E402
from tests.e2e.runtimes import (  # noqa: E402
    HOOK_POLICIES,
    IMAGE,
    DockerDaemon,
    Runtime,
    hooked,
    podman,
    point_hooks_at,
)

POLICY = '{"labels": {"bench": "containers"}, "network": {"default": "deny"}}'
PARENT, EXEC_PARENT = "bench-parent", "bench-exec-parent"
HOOK_WAYS = ("OCI hook", "parent + hook")
Variants = dict[str, tuple[Runtime, list[str]]]


def variants(runtime: Runtime, parents: dict[str, str]) -> Variants:
    """Each way to start the container: the runtime CLI to use and its run flags."""
    hook = (["--annotation", "enforcer.policy=bench"] if runtime.name == "podman"
            else ["--runtime", "enforcer", "-e", "ENFORCER_POLICY=bench"])
    with_hook, hook_flags = hooked(runtime)
    return {"plain": (runtime, []), "guarded parent": (runtime, [f"--cgroup-parent={parents[PARENT]}"]),
            "OCI hook": (runtime, hook),
            "parent + hook": (with_hook, [*hook_flags, f"--cgroup-parent={parents[EXEC_PARENT]}"])}


def measure(ways: Variants, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for cli, flags in ways.values():  # warm-up: the first start of each costs more
        cli.run("run", "--rm", "--network", "none", *flags, IMAGE, "true")
    for _ in range(rounds):
        for name, (cli, flags) in ways.items():
            started = time.perf_counter()
            cli.run("run", "--rm", "--network", "none", *flags, IMAGE, "true")
            samples[name].append(time.perf_counter() - started)
    return samples


def report(runtime: Runtime, samples: dict[str, list[float]]) -> None:
    base = statistics.median(samples["plain"])
    print(f"\n{runtime.name} run --rm --network none busybox true ({len(samples['plain'])} rounds, medians)")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:15} {median * 1000:7.0f} ms  {median / base:5.2f}x  {(median - base) * 1000:+6.0f} ms")


def rollouts(runtime: Runtime, way: str, cli: Runtime, flags: list[str], count: int, pin_dir: Path,
             list_sandboxes: Any) -> None:
    from tests.e2e.pinned_maps import map_entries

    cgroups = cgroup2_mount() / ("docker" if runtime.name == "docker" else "libpod_parent")

    def counts() -> dict[str, int]:
        sandboxes = list_sandboxes()
        return {"sandboxes": len(sandboxes), "containers held": sum(len(s.containers) for s in sandboxes),
                "cgroups": sum(1 for p in cgroups.rglob("*") if p.is_dir()),
                **{f"map {name}": n for name, n in map_entries(pin_dir).items()}}

    before = counts()
    started, refused = time.monotonic(), 0
    for _ in range(count):
        done = cli.run("run", "--rm", "--network", "none", *flags, IMAGE, "nc", "127.0.0.1", "9", check=False)
        refused += "Operation not permitted" in done.stdout + done.stderr
    time.sleep(1)  # rule sets replaced by the last re-apply are deleted off the request path
    after = counts()
    changed = {k: (before.get(k), after.get(k)) for k in {*before, *after} if before.get(k) != after.get(k)}
    print(f"\n{count} {runtime.name} rollouts, {way}, in {time.monotonic() - started:.0f} s: "
          f"{refused} refused their connect; left behind: {changed or 'nothing'} "
          f"(sandboxes {after['sandboxes']}, containers held {after['containers held']}, cgroups {after['cgroups']}, "
          f"sandbox map keys {after.get('map sandboxes')})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rollouts", type=int, default=1000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="enforcer-bench-"))
    base = cgroup2_mount() / f"enforcer-bench-{os.getpid()}"
    parents = {PARENT: base / "parent", EXEC_PARENT: base / "exec-parent"}
    flags = {name: "/" + str(path.relative_to(cgroup2_mount())) for name, path in parents.items()}
    dockerd = DockerDaemon()
    daemon = DaemonProcess(workdir)
    daemon.start()
    try:
        point_hooks_at(daemon.socket)
        (HOOK_POLICIES / "bench.json").write_text(POLICY)
        with daemon.client() as enf:
            for name, path in parents.items():
                exec_rules = {"exec": {"default": "deny", "allow": ["/bin/"]}} if name == EXEC_PARENT else {}
                enf.apply({"sandbox": name, "target": {"cgroup": str(path), "create": True},
                           "network": {"default": "deny"}, **exec_rules})
        docker = dockerd.start()
        for runtime in (docker, podman(cgroup2_mount())):
            runtime.import_image()
            report(runtime, measure(variants(runtime, flags), args.rounds))
        with daemon.client() as enf:
            for runtime in (docker, podman(cgroup2_mount())):
                for way in HOOK_WAYS:
                    cli, run_flags = variants(runtime, flags)[way]
                    rollouts(runtime, way, cli, run_flags, args.rollouts, daemon.pin_dir, enf.list)
    finally:
        dockerd.stop()
        daemon.stop()
        remove_cgroup(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
