"""The OCI hook: a container that names a policy is guarded before its first
instruction, each container its own sandbox, or it does not start at all.

Podman runs the hook from hooks.d (``--annotation enforcer.policy=NAME``);
Docker through the ``enforcer`` runtime of its daemon.json (``--runtime
enforcer -e ENFORCER_POLICY=NAME``), both as tests/e2e/runtimes.py sets them up
the way an operator would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.containers.conftest import BridgeNetwork
from tests.e2e.harness.cleanup import Cleanup
from tests.e2e.harness.waits import wait_denials
from tests.e2e.runtimes import HOOK_POLICIES, HOOK_SOCKET, IMAGE, Runtime, hooked, point_hooks_at

REFUSED_PORT = 9090
ROLLOUTS = 25
NC_REFUSED = "can't connect to remote host (127.0.0.1): Operation not permitted"


@pytest.fixture
def hooks(daemon: Any) -> Path:
    """The hooks talk to this session's daemon; policies go in the returned directory."""
    point_hooks_at(daemon.socket)
    return HOOK_POLICIES


def write_policy(directory: Path, name: str, **fields: Any) -> None:
    doc = {"labels": {"run": "ppo-7"}, "network": {"default": "deny"}, **fields}
    (directory / f"{name}.json").write_text(json.dumps(doc))


def naming(runtime: Runtime, policy: str, *labels: str) -> list[str]:
    """The flags by which a container names its policy (and extra labels)."""
    if runtime.name == "podman":
        return ["--annotation", f"enforcer.policy={policy}",
                *(a for label in labels for a in ("--annotation", f"enforcer.label.{label}"))]
    return ["--runtime", "enforcer", "-e", f"ENFORCER_POLICY={policy}",
            *(["-e", f"ENFORCER_LABELS={','.join(labels)}"] if labels else [])]


def run_to_end(runtime: Runtime, cleanup: Cleanup, *args: str) -> tuple[str, str, int]:
    """Start a container (--network none unless given) and wait for it: (its id, its output, its exit code)."""
    network = [] if "--network" in args else ["--network", "none"]
    container = runtime.run("run", "-d", *network, *args).stdout.strip()
    cleanup.add(lambda: runtime.run("rm", "-f", container, check=False))
    code = int(runtime.run("wait", container).stdout.strip())
    logs = runtime.run("logs", container)
    return container, logs.stdout + logs.stderr, code


def test_a_container_naming_a_policy_is_its_own_sandbox_from_its_first_instruction(
        client, hooks: Path, runtime: Runtime, cleanup: Cleanup):
    write_policy(hooks, "no-egress")
    # The container's first program is the refused connect; then it stays up.
    container = runtime.run("run", "-d", "--network", "none", *naming(runtime, "no-egress", "episode=17"), IMAGE,
                            "sh", "-c", f"nc 127.0.0.1 {REFUSED_PORT}; sleep 600").stdout.strip()
    cleanup.add(lambda: runtime.run("rm", "-f", container, check=False))
    denials = wait_denials(client, container, 1)
    assert [(d.destination.port, d.process.comm) for d in denials] == [(REFUSED_PORT, "nc")]
    assert dict(denials[0].labels) == {"run": "ppo-7", "episode": "17", "container": container[:12]}
    assert NC_REFUSED in runtime.run("logs", container).stderr
    pid = runtime.init_pid(container)
    line = next(x for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if x.startswith("0::"))
    assert client.get(container).cgroup_path.endswith(line[3:])  # the container's own cgroup
    runtime.run("rm", "-f", container)  # poststop: the sandbox ends with the container
    assert container not in [p.policy.sandbox for p in client.list()]


def test_exec_entries_name_the_images_files(client, hooks: Path, runtime: Runtime, cleanup: Cleanup):
    write_policy(hooks, "busybox-only", exec={"default": "deny", "allow": ["/bin/"]})
    container, output, _ = run_to_end(
        runtime, cleanup, *naming(runtime, "busybox-only"), IMAGE,
        "sh", "-c", "echo image-ok; cp /bin/busybox /tmp/copy; /tmp/copy echo copy-ran; echo after:$?")
    assert "image-ok" in output and "copy-ran" not in output, output
    assert [d.exec.path for d in wait_denials(client, container, 1)] == ["/tmp/copy"]


@pytest.mark.parametrize("problem", ["unknown policy", "daemon unreachable", "bad policy"])
def test_a_container_that_cannot_be_guarded_does_not_start(
        client, hooks: Path, runtime: Runtime, cleanup: Cleanup, daemon: Any, problem: str):
    name = "never-written"
    if problem == "daemon unreachable":
        write_policy(hooks, "fine")
        name = "fine"
        point_hooks_at("/nonexistent/enforcer.sock")
        cleanup.add(lambda: point_hooks_at(daemon.socket))
    elif problem == "bad policy":
        write_policy(hooks, "bad", exec={"default": "deny", "allow": ["/usr/bin/python3"]})  # not in the image
        name = "bad"
    before = {p.policy.sandbox for p in client.list()}
    marker = f"enforcer-test-started-{runtime.name}-{problem.replace(' ', '-')}"
    done = runtime.run("run", "--rm", "--network", "none", *naming(runtime, name), IMAGE, "echo", marker,
                       check=False)
    assert done.returncode != 0 and marker not in done.stdout, done.stdout + done.stderr
    expected = {"unknown policy": f"no policy 'never-written' in {HOOK_POLICIES}",
                "daemon unreachable": "enforcer: cannot reach the daemon at unix:/run/enforcer-test-docker/enforcer.sock",
                "bad policy": "exec.allow[0]: /usr/bin/python3 does not exist in the container's root"}[problem]
    assert expected in done.stderr, done.stderr
    assert {p.policy.sandbox for p in client.list()} == before  # nothing half-applied


COPY_AND_RUN = "echo image-ok; cp /bin/busybox /tmp/copy; /tmp/copy echo copy-ran; echo after:$?"


def exec_parent(client, cgroup_root: Path, sandbox: str, cleanup: Cleanup) -> str:
    """A guarded parent whose exec entries name the image's /bin; its --cgroup-parent."""
    from enforcer.cgroupfs import cgroup2_mount

    path = cgroup_root / sandbox
    client.apply({"sandbox": sandbox, "target": {"cgroup": str(path), "create": True}, "labels": {"run": "ppo-8"},
                  "network": {"default": "deny"}, "exec": {"default": "deny", "allow": ["/bin/"]}})
    cleanup.add(lambda: client.remove(sandbox))
    return "/" + str(path.relative_to(cgroup2_mount()))


def test_a_container_in_a_guarded_parent_runs_the_images_allowed_files(
        client, hooks: Path, cgroup_root: Path, runtime: Runtime, cleanup: Cleanup):
    """Naming no policy, started in a guarded parent: the hook adds it to the
    parent's sandbox, whose entries then name the container's files too, and
    takes it out again when it ends."""
    sandbox = f"parent-exec-{runtime.name}"
    parent = exec_parent(client, cgroup_root, sandbox, cleanup)
    with_hook, flags = hooked(runtime)
    container = with_hook.run("run", "-d", "--network", "none", *flags, f"--cgroup-parent={parent}", IMAGE,
                              "sh", "-c", f"{COPY_AND_RUN}; sleep 600").stdout.strip()
    cleanup.add(lambda: with_hook.run("rm", "-f", container, check=False))
    denials = wait_denials(client, sandbox, 1)
    output = with_hook.run("logs", container)
    assert "image-ok" in output.stdout and "copy-ran" not in output.stdout + output.stderr, output
    assert [(d.exec.path, dict(d.labels)["run"]) for d in denials] == [("/tmp/copy", "ppo-8")]
    assert [c.container for c in client.get(sandbox).containers] == [container]
    with_hook.run("rm", "-f", container)
    assert list(client.get(sandbox).containers) == []  # poststop took it out


def test_containers_of_a_guarded_parent_leave_no_rule_behind(
        daemon: Any, client, hooks: Path, cgroup_root: Path, runtime: Runtime, cleanup: Cleanup):
    """Rollouts in one guarded parent, each added and taken out by the hook:
    after them the parent holds no container and the maps hold what they held."""
    import time

    from tests.e2e.pinned_maps import map_entries

    sandbox = f"parent-rollouts-{runtime.name}"
    parent = exec_parent(client, cgroup_root, sandbox, cleanup)
    with_hook, flags = hooked(runtime)
    before = map_entries(daemon.pin_dir)
    for _ in range(ROLLOUTS // 5):
        done = with_hook.run("run", "--rm", "--network", "none", *flags, f"--cgroup-parent={parent}", IMAGE,
                             "echo", "rollout-ran")
        assert "rollout-ran" in done.stdout
    assert list(client.get(sandbox).containers) == []
    deadline = time.monotonic() + 10  # replaced rule sets are deleted off the request path
    while map_entries(daemon.pin_dir) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert map_entries(daemon.pin_dir) == before


def test_without_the_hook_a_guarded_parents_exec_entries_stop_the_image(
        client, cgroup_root: Path, runtime: Runtime, cleanup: Cleanup):
    """Fail closed: a container the hook did not add has none of its files in the
    allowlist, so its first program is stopped."""
    sandbox = f"parent-exec-unhooked-{runtime.name}"
    parent = exec_parent(client, cgroup_root, sandbox, cleanup)
    done = runtime.run("run", "--rm", "--network", "none", f"--cgroup-parent={parent}", IMAGE,
                       "echo", "started", check=False)
    assert done.returncode != 0 and "started" not in done.stdout, done.stdout + done.stderr
    assert [d.exec.path for d in wait_denials(client, sandbox, 1)][-1:] == ["/bin/echo"]


def test_a_container_of_the_enforcer_runtime_without_a_policy_does_not_start(
        hooks: Path, docker: Runtime):
    done = docker.run("run", "--rm", "--network", "none", "--runtime", "enforcer", IMAGE, "echo", "started",
                      check=False)
    assert done.returncode != 0 and "started" not in done.stdout
    assert "names no policy" in done.stderr, done.stderr
    assert HOOK_SOCKET.is_symlink()


def cgroups_below(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_dir()) if root.exists() else 0


def test_rollouts_leave_no_sandbox_entry_or_cgroup_behind(daemon: Any, client, hooks: Path, runtime: Runtime):
    """Each rollout a container of its own, removed when it ends (--rm): after
    them, the daemon's sandboxes, the pinned maps' entries and the cgroups are
    as before. (bench/containers.py runs 1,000.)"""
    from enforcer.cgroupfs import cgroup2_mount
    from tests.e2e.pinned_maps import map_entries

    write_policy(hooks, "rollout")
    runtime_cgroups = cgroup2_mount() / ("docker" if runtime.name == "docker" else "libpod_parent")
    before = ({p.policy.sandbox for p in client.list()}, map_entries(daemon.pin_dir), cgroups_below(runtime_cgroups))
    seen = 0
    for _ in range(ROLLOUTS):
        done = runtime.run("run", "--rm", "--network", "none", *naming(runtime, "rollout"), IMAGE,
                           "nc", "127.0.0.1", str(REFUSED_PORT), check=False)
        seen += NC_REFUSED in done.stderr + done.stdout
    after = ({p.policy.sandbox for p in client.list()}, map_entries(daemon.pin_dir), cgroups_below(runtime_cgroups))
    assert seen == ROLLOUTS
    assert after == before


def test_a_container_started_again_is_guarded_again(client, hooks: Path, runtime: Runtime, cleanup: Cleanup):
    write_policy(hooks, "again")
    container, _, _ = run_to_end(runtime, cleanup, *naming(runtime, "again"), IMAGE,
                                 "nc", "127.0.0.1", str(REFUSED_PORT))
    assert container not in [p.policy.sandbox for p in client.list()]  # ended with it
    runtime.run("start", container)
    runtime.run("wait", container)
    assert [d.destination.port for d in wait_denials(client, container, 2)] == [REFUSED_PORT] * 2
    assert NC_REFUSED in runtime.run("logs", container).stderr


def test_allow_by_name_works_with_the_containers_own_resolver(
        client, hooks: Path, runtime: Runtime, bridge_network: BridgeNetwork, cleanup: Cleanup, tmp_path: Path):
    """On a bridge network, with the container's resolv.conf naming a test DNS
    server on the host's end of the bridge: its queries go through the daemon's
    forwarder (listening in the container's namespace from the hook's apply on,
    asking the policy's upstream from there), a listed name resolves and
    connects, an unlisted one is refused, a literal address stays refused."""
    from enforcer.v1 import enforcer_pb2 as pb
    from tests.e2e import dnsworld

    host = bridge_network.host
    zone = dnsworld.Zone()
    zone.set("mirror.test", ("A", host, 300))
    zone.set("c2.test", ("A", host, 300))
    udp, tcp = dnsworld.bound_sockets([host])
    cleanup.add(dnsworld.TestDnsServer(zone, udp, tcp).close)
    cleanup.add(dnsworld.TestHost(dnsworld.listen_tcp(host, 8080)).close)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {host}\n")
    write_policy(hooks, "by-name", network={"default": "deny", "dns": {"upstream": [host]},
                                            "allow": [{"to": "mirror.test", "ports": [8080], "protocol": "tcp"}]})
    script = ("nslookup mirror.test >/dev/null && echo resolved:OK; "
              f"nc {host} 8080 </dev/null >/dev/null && echo connected:OK; "
              "nslookup c2.test >/dev/null || echo c2:refused; "
              f"nc {host} {REFUSED_PORT} </dev/null 2>&1; echo done")
    container, output, _ = run_to_end(runtime, cleanup, "--network", bridge_network.name, *naming(runtime, "by-name"),
                                      "-v", f"{resolv}:/etc/resolv.conf:ro", IMAGE, "sh", "-c", script)
    assert "resolved:OK" in output and "connected:OK" in output and "c2:refused" in output, output
    assert f"can't connect to remote host ({host}): Operation not permitted" in output, output
    kinds = {(d.kind, d.dns.name or f"{d.destination.address}:{d.destination.port}")
             for d in wait_denials(client, container, 2)}
    assert (pb.DENIAL_KIND_DNS, "c2.test") in kinds and (pb.DENIAL_KIND_CONNECT, f"{host}:{REFUSED_PORT}") in kinds
