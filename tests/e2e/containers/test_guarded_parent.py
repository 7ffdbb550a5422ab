"""Real containers: Docker and Podman containers started the way labs start them,
under a guarded parent cgroup the daemon creates (``target: {cgroup: ...,
create: true}`` then ``--cgroup-parent``), are held to the policy from their
first instruction, and their refusals reach the stream with the sandbox's labels.

Not marked ``kernel``: the runtimes run on this machine only (the VM kernels of
the matrix have none); what the kernel does is covered there by the cgroup tests.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from enforcer.cgroupfs import cgroup2_mount
from tests.e2e.containers.conftest import BridgeNetwork
from tests.e2e.harness.cleanup import Cleanup
from tests.e2e.harness.daemon import DaemonProcess
from tests.e2e.harness.waits import wait_denials
from tests.e2e.runtimes import IMAGE, Runtime

# Inside the container (its own loopback, --network none): a listener on the
# allowed port, then the program under test as the container's first process.
ALLOWED_PORT, REFUSED_PORT = 8080, 9090
NC_REFUSED = "can't connect to remote host (127.0.0.1): Operation not permitted"  # busybox nc, EPERM
CONNECT_TWICE = (f"nc -l -p {ALLOWED_PORT} -e true & sleep 0.5; "
                 f"nc 127.0.0.1 {ALLOWED_PORT} </dev/null && echo allowed:OK; "
                 f"nc 127.0.0.1 {REFUSED_PORT} </dev/null 2>&1; echo refused:$?")


def guarded_parent(cgroup_root: Path, sandbox: str) -> tuple[Path, str]:
    """A cgroup path the daemon is to create, and the --cgroup-parent that names it."""
    path = cgroup_root / sandbox
    return path, "/" + str(path.relative_to(cgroup2_mount()))


def parent_policy(sandbox: str, path: Path, **extra: Any) -> dict[str, Any]:
    return {"sandbox": sandbox, "target": {"cgroup": str(path), "create": True},
            "labels": {"run": "ppo-7", "runtime": sandbox.split("-")[-1]},
            "network": {"default": "deny", "allow": [{"to": "127.0.0.1", "ports": [ALLOWED_PORT], "protocol": "tcp"}]},
            **extra}


def test_a_container_under_a_guarded_parent_is_held_from_its_first_instruction(
        client, cgroup_root, runtime: Runtime, cleanup: Cleanup):
    sandbox = f"container-{runtime.name}"
    path, parent = guarded_parent(cgroup_root, sandbox)
    assert not path.exists()
    client.apply(parent_policy(sandbox, path))
    cleanup.add(lambda: client.remove(sandbox))
    assert path.is_dir()  # the daemon made it
    # The container's very first program is the refused connect.
    first = runtime.run("run", "--rm", "--network", "none", f"--cgroup-parent={parent}", IMAGE,
                        "nc", "127.0.0.1", str(REFUSED_PORT), check=False)
    assert first.returncode != 0 and NC_REFUSED in first.stdout + first.stderr, first.stdout + first.stderr
    both = runtime.run("run", "--rm", "--network", "none", f"--cgroup-parent={parent}", IMAGE, "sh", "-c", CONNECT_TWICE)
    assert "allowed:OK" in both.stdout and NC_REFUSED in both.stdout, both.stdout + both.stderr
    denials = wait_denials(client, sandbox, 2)
    assert [(d.destination.address, d.destination.port) for d in denials] == [("127.0.0.1", REFUSED_PORT)] * 2
    assert all(d.process.comm == "nc" and dict(d.labels)["runtime"] == runtime.name for d in denials)
    stats = client.stats(sandbox)
    assert stats.connect.refused == 2 and stats.events_lost == 0


def test_the_container_cgroup_is_inside_the_guarded_parent(client, cgroup_root, docker: Runtime, cleanup: Cleanup):
    """Where the runtime puts the container, read from its init's ``0::`` line."""
    sandbox = "container-placement"
    path, parent = guarded_parent(cgroup_root, sandbox)
    client.apply(parent_policy(sandbox, path))
    cleanup.add(lambda: client.remove(sandbox))
    container = docker.run("run", "-d", "--network", "none", f"--cgroup-parent={parent}", IMAGE,
                           "sleep", "60").stdout.strip()
    cleanup.add(lambda: docker.run("rm", "-f", container, check=False))
    pid = docker.init_pid(container)
    line = next(x for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if x.startswith("0::"))
    assert cgroup2_mount() / line[3:].lstrip("/") == path / container


def test_removing_the_policy_removes_the_cgroup_the_daemon_created(client, cgroup_root):
    sandbox = "created-cgroup"
    path = cgroup_root / sandbox / "nested"
    client.apply(parent_policy(sandbox, path))
    assert path.is_dir()
    client.remove(sandbox)
    assert not path.exists() and (cgroup_root / sandbox).is_dir()  # only the cgroup it names


def test_a_created_cgroup_gone_while_no_daemon_ran_is_made_and_guarded_again(tmp_path, cgroup_root):
    """After a reboot the cgroup is gone but the saved policy is not: a container
    started with --cgroup-parent must not land in an unguarded cgroup that the
    runtime makes itself."""
    sandbox = "created-again"
    path = cgroup_root / sandbox
    proc = DaemonProcess(tmp_path)
    proc.start()
    try:
        with proc.client() as enf:
            enf.apply(parent_policy(sandbox, path))
            first_id = enf.get(sandbox).cgroup_id
        proc.stop(keep_enforcing=True)
        path.rmdir()
        proc.start()
        with proc.client() as enf:
            applied = enf.get(sandbox)
        assert path.is_dir() and applied.cgroup_path == str(path) and applied.cgroup_id != first_id
        assert any(e.get("event") == "sandbox_reapplied" and "created again" in e.get("why", "")
                   for e in proc.log_events())
    finally:
        proc.stop()


def test_a_failed_apply_leaves_no_created_cgroup(client, cgroup_root):
    from enforcer.client import EnforcerError

    path = cgroup_root / "never-made" / "sb"
    # Refused by the daemon after it made the cgroup: exec entries are resolved there.
    with pytest.raises(EnforcerError, match=r"exec.allow\[0\]: /etc is a directory"):
        client.apply(parent_policy("never-made", path, exec={"default": "deny", "allow": ["/etc"]}))
    assert not (cgroup_root / "never-made").exists()
    assert "never-made" not in [p.policy.sandbox for p in client.list()]


def running(runtime: Runtime, cleanup: Cleanup, *args: str) -> str:
    """A container left running (``sleep``), removed after the test; its id."""
    container = runtime.run("run", "-d", "--network", "none", *args, IMAGE, "sleep", "600").stdout.strip()
    cleanup.add(lambda: runtime.run("rm", "-f", container, check=False))
    return container


def exec_in(runtime: Runtime, container: str, *command: str) -> tuple[int, str]:
    done = runtime.run("exec", container, *command, check=False)
    return done.returncode, done.stdout + done.stderr


def refused(code: int, output: str) -> bool:
    """Stopped before it ran: SIGKILL (tracepoint mode: 137 from the runtime) or EPERM (BPF-LSM)."""
    return code == 137 or "permission denied" in output.lower() or "not permitted" in output.lower()


def test_exec_entries_of_a_container_target_name_the_containers_files(
        client, runtime: Runtime, cleanup: Cleanup):
    """``/bin/`` is the image's /bin (busybox), not the host's: its programs run,
    and a copy written into the container's upper layer is refused."""
    sandbox = f"container-exec-{runtime.name}"
    container = running(runtime, cleanup)
    assert exec_in(runtime, container, "cp", "/bin/busybox", "/tmp/copy") == (0, "")  # before the policy
    client.apply({"sandbox": sandbox, "target": {"container": container[:12]},
                  "exec": {"default": "deny", "allow": ["/bin/"]}})
    cleanup.add(lambda: client.remove(sandbox))
    assert exec_in(runtime, container, "/bin/sh", "-c", "echo in-container") == (0, "in-container\n")
    assert exec_in(runtime, container, "echo", "by-name") == (0, "by-name\n")
    assert refused(*exec_in(runtime, container, "/tmp/copy", "echo", "copied"))
    denials = wait_denials(client, sandbox, 1)
    assert [d.exec.path for d in denials] == ["/tmp/copy"]


def test_exec_entries_missing_from_the_image_are_refused_by_field(client, runtime: Runtime, cleanup: Cleanup):
    from enforcer.client import EnforcerError

    container = running(runtime, cleanup)
    # /usr/bin/python3 is on this host, not in the busybox image: the image decides.
    with pytest.raises(EnforcerError, match=r"exec.allow\[1\]: /usr/bin/python3 does not exist in the container's"):
        client.apply({"sandbox": "missing-exec", "target": {"container": container},
                      "exec": {"default": "deny", "allow": ["/bin/", "/usr/bin/python3"]}})
    assert "missing-exec" not in [p.policy.sandbox for p in client.list()]


def test_a_container_that_has_exited_is_refused_by_field(client, docker: Runtime, cleanup: Cleanup):
    from enforcer.client import EnforcerError

    container = docker.run("run", "-d", "--network", "none", IMAGE, "true").stdout.strip()
    cleanup.add(lambda: docker.run("rm", "-f", container, check=False))
    docker.run("wait", container)
    with pytest.raises(EnforcerError, match=r"target.container: no cgroup found for container"):
        client.apply({"sandbox": "exited", "target": {"container": container},
                      "exec": {"default": "deny", "allow": ["/bin/"]}})


@pytest.mark.parametrize("gpu", ["deny", "allow"])
def test_a_gpu_node_handed_in_with_device_is_refused_unless_granted(
        client, cgroup_root, runtime: Runtime, cleanup: Cleanup, tmp_path, gpu: str):
    """A node with NVIDIA's real major (no GPU here: with no driver behind it,
    an open that gets through fails with ENXIO instead of EPERM)."""
    node = tmp_path / "nvidia0"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(195, 0))
    sandbox = f"container-gpu-{gpu}-{runtime.name}"
    path, parent = guarded_parent(cgroup_root, sandbox)
    client.apply(parent_policy(sandbox, path, devices={"gpu": gpu}))
    cleanup.add(lambda: client.remove(sandbox))
    # The same path inside as outside: the runtime's own mknod of the node is
    # refused too, in the container's cgroup, and runc then bind-mounts the
    # host's node (a real GPU host has /dev/nvidia0; this test's is elsewhere).
    done = runtime.run("run", "--rm", "--network", "none", f"--cgroup-parent={parent}",
                       "--device", str(node), IMAGE, "cat", str(node), check=False)
    output = done.stdout + done.stderr
    if gpu == "allow":
        assert "No such device or address" in output and client.stats(sandbox).device.refused == 0, output
        return
    assert "Operation not permitted" in output, output
    opened = [d for d in wait_denials(client, sandbox, 2) if d.process.comm == "cat"]
    assert [(d.device.name, d.device.driver, d.device.access) for d in opened] == [("/dev/nvidia0", "nvidia", "r")]


def test_a_container_on_a_bridge_network_is_refused_with_eperm(
        client, cgroup_root, runtime: Runtime, bridge_network: BridgeNetwork, cleanup: Cleanup):
    from tests.e2e import dnsworld

    host = bridge_network.host
    cleanup.add(dnsworld.TestHost(dnsworld.listen_tcp(host, ALLOWED_PORT)).close)
    sandbox = f"container-bridge-{runtime.name}"
    path, parent = guarded_parent(cgroup_root, sandbox)
    client.apply({**parent_policy(sandbox, path), "network": {
        "default": "deny", "allow": [{"to": host, "ports": [ALLOWED_PORT], "protocol": "tcp"}]}})
    cleanup.add(lambda: client.remove(sandbox))
    script = (f"nc {host} {ALLOWED_PORT} </dev/null && echo allowed:OK; "
              f"nc {host} {REFUSED_PORT} </dev/null 2>&1; echo done")
    done = runtime.run("run", "--rm", "--network", bridge_network.name, f"--cgroup-parent={parent}", IMAGE,
                      "sh", "-c", script)
    assert "allowed:OK" in done.stdout, done.stdout + done.stderr
    assert f"can't connect to remote host ({host}): Operation not permitted" in done.stdout, done.stdout
    assert [(d.destination.address, d.destination.port) for d in wait_denials(client, sandbox, 1)] == [
        (host, REFUSED_PORT)]
