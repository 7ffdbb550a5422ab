"""Fixtures for end-to-end tests: a real daemon process, real cgroups, and a
network namespace that plays the outside world with no route off the machine.

Everything created is registered for clean-up when it is created (pyroute2's
fixture style), so a failing test leaves nothing behind."""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("probe.py")
NETNS = f"enf-test-{os.getpid()}"
# Test hosts: addresses on the test namespace's loopback only.
HOST4 = "10.231.0.1"
NET4 = "10.231.0.0/24"
HOST6 = "fd00:231::1"
NET6 = "fd00:231::/64"
# Under software emulation (the VM kernels of tests/kernels/matrix.py) everything
# runs several times slower: waits for the system to get somewhere scale with
# this; what a test asserts about the result never does.
SLOWDOWN = float(os.environ.get("ENFORCER_TEST_SLOWDOWN", "1"))


def patience(seconds: float) -> float:
    """How long to wait for something that takes ``seconds`` on real hardware."""
    return seconds * SLOWDOWN


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.bpf)


def _environment_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc (python3-bpfcc) is not importable"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "kernel has no BTF"
    if " cgroup2 " not in Path("/proc/mounts").read_text():
        return "no cgroup2 mount"
    return None


@pytest.fixture(scope="session", autouse=True)
def _bpf_environment() -> None:
    problem = _environment_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="session", autouse=True)
def _kernel_properties(record_testsuite_property: Callable[[str, object], None]) -> None:
    """What tests/kernels/report.py prints for each kernel (--junitxml)."""
    from tests.kernels import features

    record_testsuite_property("kernel", os.uname().release)
    from enforcer.kernel.loader import lsm_list

    record_testsuite_property("lsm", ",".join(lsm_list()) or "-")
    record_testsuite_property("expected_features", ",".join(sorted(features.expected())))
    record_testsuite_property("slowdown", SLOWDOWN)


def expected_exec_mode() -> str:
    """The exec mode this kernel must get (tests/kernels/features.py): one that
    enables BPF-LSM, or is declared to, gets "lsm", never a quiet fallback.
    The mode also decides how packet sockets are stopped."""
    from tests.kernels import features

    return "lsm" if "bpf_lsm" in features.expected() else "tracepoint"


def pytest_runtest_setup(item: pytest.Item) -> None:
    from tests.kernels import features

    for marker in item.iter_markers("needs_kernel"):
        feature, reason = marker.args
        why = features.missing(feature)
        if why is None:
            continue
        if feature in features.expected():
            pytest.fail(f"this kernel is expected to offer {feature} ({features.FEATURES[feature]}) "
                        f"but does not: {why}", pytrace=False)
        item.user_properties.append(("kernel_lacks", feature))
        pytest.skip(f"needs {feature} ({reason}): {why}")


class Cleanup:
    """LIFO registry of undo actions; every action runs even if one fails."""

    def __init__(self) -> None:
        self._actions: list[Callable[[], Any]] = []

    def add(self, action: Callable[[], Any]) -> None:
        self._actions.append(action)

    def run(self) -> None:
        errors = []
        while self._actions:
            try:
                self._actions.pop()()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def session_cleanup() -> Iterator[Cleanup]:
    cleanup = Cleanup()
    yield cleanup
    cleanup.run()


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    registry = Cleanup()
    yield registry
    registry.run()


class DaemonProcess:
    """A daemon with its own socket, audit log, state directory and bpffs pin
    directory. ``stop`` ends its enforcement too (``--uninstall``) unless told
    to keep it, as a restart does."""

    def __init__(self, workdir: Path, *extra: str, wrapper: tuple[str, ...] = ()) -> None:
        """``wrapper``: a command the daemon is run under (its argv appended)."""
        self.wrapper = wrapper
        self.socket = str(workdir / "enforcer.sock")
        self.log_path = workdir / "daemon.log"
        self.audit_path = workdir / "audit.jsonl"
        self.state_dir = workdir / "state"
        self.pin_dir = bpffs() / f"enforcer-test-{os.getpid()}-{next(_instances)}"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dirs(self) -> list[str]:
        return ["--state-dir", str(self.state_dir), "--pin-dir", str(self.pin_dir)]

    def start(self) -> None:
        from enforcer.client import Enforcer

        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "enforcer.cli", "daemon", "--socket", self.socket,
             "--audit-log", str(self.audit_path), *self.dirs, *self.extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        with Enforcer(self.socket) as enf:
            for _ in range(int(patience(600))):
                if self.proc.poll() is not None:
                    break
                try:
                    enf.wait_ready(0.1)
                    return
                except Exception:
                    continue
            self.proc.kill()
            raise RuntimeError(f"daemon did not start:\n{self.log_path.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, keep_enforcing: bool = False) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=patience(20))
        self._log.close()
        if not keep_enforcing:
            self.uninstall()
        return code

    def uninstall(self) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "enforcer.cli", "daemon", "--uninstall", "--socket", self.socket,
                               *self.dirs], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert done.returncode == 0, done.stderr
        return done

    def log_text(self) -> str:
        return self.log_path.read_text()

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def client(self) -> Any:
        from enforcer.client import Enforcer

        return Enforcer(self.socket)


_instances = itertools.count()


def bpffs() -> Path:
    from enforcer.kernel.pins import bpffs_root

    return bpffs_root()


# What a refused call returns to a probe (tests/e2e/syscall_probe.py) with BPF-LSM.
EPERM = {"returned": -1, "errno": 1}


@pytest.fixture(scope="session")
def by_lsm(daemon: DaemonProcess) -> str | dict[str, int]:
    """What a refused bpf() (or any syscall an LSM hook stands for) gives a
    sandboxed probe on this kernel: EPERM with BPF-LSM, else "killed"."""
    with daemon.client() as enf:
        mode = enf.status().exec_enforcement
    assert mode == expected_exec_mode()
    return EPERM if mode == "lsm" else "killed"


@pytest.fixture(scope="session")
def workdir(session_cleanup: Cleanup) -> Path:
    path = Path(tempfile.mkdtemp(prefix="enforcer-test-"))
    session_cleanup.add(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


@pytest.fixture(scope="session")
def daemon(workdir: Path, session_cleanup: Cleanup,
           record_testsuite_property: Callable[[str, object], None]) -> DaemonProcess:
    # A low event budget per sandbox keeps flood tests short; counters stay exact.
    proc = DaemonProcess(workdir, "--events-per-sec", "500")
    proc.start()
    session_cleanup.add(proc.stop)
    with proc.client() as enf:
        record_testsuite_property("exec_enforcement", enf.status().exec_enforcement)  # for the per-kernel report
    return proc


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[Any]:
    enf = daemon.client()
    yield enf
    enf.close()


@pytest.fixture(scope="session")
def cgroup_root(session_cleanup: Cleanup) -> Path:
    from enforcer.cgroupfs import cgroup2_mount, remove_cgroup

    root = cgroup2_mount() / f"enforcer-test-{os.getpid()}"
    root.mkdir()
    session_cleanup.add(lambda: remove_cgroup(root))
    return root


@pytest.fixture
def make_cgroup(cgroup_root: Path, cleanup: Cleanup, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    from enforcer.cgroupfs import remove_cgroup

    base = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:60]

    def make(name: str = "sb") -> Path:
        path = cgroup_root / base / name
        path.mkdir(parents=True)
        cleanup.add(lambda: remove_cgroup(cgroup_root / base))
        return path

    return make


@pytest.fixture
def sandbox_id(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:100]


@pytest.fixture(scope="session")
def netns(session_cleanup: Cleanup) -> str:
    """A namespace whose loopback carries the test hosts 10.231.0.0/24 and
    fd00:231::/64. It has no other interface: nothing sent there leaves the machine."""
    from pyroute2 import NetNS, netns

    netns.create(NETNS)
    session_cleanup.add(lambda: netns.remove(NETNS))
    with NetNS(NETNS) as ns:
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up")
        ns.addr("add", index=lo, address=HOST4, prefixlen=24)
        ns.addr("add", index=lo, address=HOST6, prefixlen=64)
        # Make the whole /64 local, as 10.231.0.0/24 is by its local route.
        ns.route("add", dst="fd00:231::", dst_len=64, type="local", table=255, oif=lo, family=socket.AF_INET6)
        # Network safety: the namespace must have no way out.
        # (Unprivileged ICMP sockets are off by default in a new netns; enable them
        # so the test reaches our sock_create hook instead of the sysctl's EACCES.)
        assert [link.get_attr("IFLA_IFNAME") for link in ns.get_links()] == ["lo"]
    subprocess.run(["ip", "netns", "exec", NETNS, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"],
                   check=True)
    return NETNS


Probe = Callable[..., list[str]]


@pytest.fixture
def probe(netns: str) -> Probe:
    """Run probe ops as a real process inside ``cgroup`` (and the test netns)."""
    from enforcer.cgroupfs import move_pid

    def run(cgroup: Path | None, *ops: dict[str, Any], in_netns: bool = True, timeout: float = 60) -> list[str]:
        """``timeout``: seconds on this machine (patience scales it under emulation)."""
        command = [sys.executable, str(PROBE)]
        if in_netns:
            command = ["ip", "netns", "exec", netns, *command]
        result = subprocess.run(
            command,
            input=json.dumps(list(ops)),
            capture_output=True,
            text=True,
            timeout=patience(timeout),
            preexec_fn=(lambda: move_pid(0, cgroup)) if cgroup else None,
        )
        if result.returncode != 0:
            return [f"exit:{result.returncode}", result.stderr[-500:]]
        return json.loads(result.stdout)

    return run


def wait_denials(client: Any, sandbox: str, count: int, timeout: float = 10.0) -> list[Any]:
    """The sandbox's retained denials, once there are at least ``count``."""
    import time

    deadline = time.monotonic() + patience(timeout)
    while True:
        events = list(client.denial_events(sandboxes=[sandbox]))
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


# ---- DNS: an "internet" namespace with a test DNS server (tests/e2e/dnsworld.py) ----

AGENT_NETNS = f"enf-agent-{os.getpid()}"
INET_NETNS = f"enf-inet-{os.getpid()}"


class DnsWorld:
    def __init__(self, zone: Any, agent_netns: str) -> None:
        self.zone = zone
        self.agent_netns = agent_netns


def _veth_up(ns: Any, veth_name: str, address4: str, address6: str) -> int:
    """Bring up lo and the veth end with its addresses; returns lo's index."""
    lo = ns.link_lookup(ifname="lo")[0]
    veth = ns.link_lookup(ifname=veth_name)[0]
    for index in (lo, veth):
        ns.link("set", index=index, state="up")
    ns.addr("add", index=veth, address=address4, prefixlen=24)
    ns.addr("add", index=veth, address=address6, prefixlen=64)
    return lo


@pytest.fixture(scope="session")
def dns_world(session_cleanup: Cleanup) -> DnsWorld:
    """Names served by a test DNS server in the inet namespace (10.233.0.53,
    fd00:233::53) and on the host's loopback (127.0.0.153); test hosts answer
    TCP 443 on 10.233.0.10-12 and fd00:233::10 (inet) and 127.0.0.10-12 (host)."""
    from pyroute2 import NetNS, netns

    from enforcer import netns as enf_netns
    from tests.e2e import dnsworld as w

    for name in (AGENT_NETNS, INET_NETNS):
        netns.create(name)
        session_cleanup.add(lambda name=name: netns.remove(name))
    with NetNS(INET_NETNS) as inet:
        inet.link("add", ifname="veth-inet", kind="veth", peer={"ifname": "veth-agent", "net_ns_fd": AGENT_NETNS})
        lo = _veth_up(inet, "veth-inet", w.INET4, w.INET6)
        inet.addr("add", index=lo, address="10.233.0.1", prefixlen=24)
        for address in ("fd00:233::10", "fd00:233::53"):  # bound by the test servers
            inet.addr("add", index=lo, address=address, prefixlen=128)
        assert sorted(link.get_attr("IFLA_IFNAME") for link in inet.get_links()) == ["lo", "veth-inet"]
    with NetNS(AGENT_NETNS) as agent:
        _veth_up(agent, "veth-agent", w.AGENT4, w.AGENT6)
        agent.route("add", dst="10.233.0.0", dst_len=24, gateway=w.INET4)
        agent.route("add", dst="fd00:233::", dst_len=64, gateway=w.INET6, family=socket.AF_INET6)
        # Network safety: no default route, no other interface.
        assert sorted(link.get_attr("IFLA_IFNAME") for link in agent.get_links()) == ["lo", "veth-agent"]
    for name in (AGENT_NETNS, INET_NETNS):  # IPv6 duplicate address detection would delay the addresses
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"], check=True)
    # `ip netns exec` shows the agent this resolv.conf: the resolver it is configured with.
    etc = Path("/etc/netns") / AGENT_NETNS
    etc.mkdir(parents=True, exist_ok=True)
    session_cleanup.add(lambda: shutil.rmtree(etc, ignore_errors=True))
    (etc / "resolv.conf").write_text(f"nameserver {w.DNS4}\noptions timeout:2 attempts:1\n")

    zone = w.Zone()
    inet_ns = enf_netns.open_named(INET_NETNS)
    session_cleanup.add(inet_ns.close)

    def serve_inet() -> list[Any]:
        udp, tcp = w.bound_sockets([w.DNS4, w.DNS6])
        hosts = [w.TestHost(w.listen_tcp(a, 443)) for a in ("10.233.0.10", "10.233.0.11", "10.233.0.12",
                                                             "fd00:233::10")]
        return [w.TestDnsServer(zone, udp, tcp), *hosts]

    for thing in enf_netns.run_in(inet_ns, serve_inet):
        session_cleanup.add(thing.close)
    udp, tcp = w.bound_sockets([w.LOCAL_DNS])
    session_cleanup.add(w.TestDnsServer(zone, udp, tcp).close)
    for address in ("127.0.0.10", "127.0.0.11", "127.0.0.12"):
        session_cleanup.add(w.TestHost(w.listen_tcp(address, 443)).close)
    return DnsWorld(zone, AGENT_NETNS)


class AgentRun:
    """A probe process that exists (in its cgroup and namespace) before its
    policy is applied, as a container does, and runs its ops on ``go``."""

    def __init__(self, proc: subprocess.Popen[str], go_file: Path) -> None:
        self.proc = proc
        self.go_file = go_file

    def go(self, timeout: float = 60) -> list[str]:
        self.go_file.touch()
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            return [f"exit:{self.proc.returncode}", err[-800:]]
        return json.loads(out)


@pytest.fixture
def spawn_agent(cleanup: Cleanup, tmp_path: Path) -> Callable[..., AgentRun]:
    from enforcer.cgroupfs import move_pid

    count = itertools.count()

    def spawn(cgroup: Path, *ops: dict[str, Any], netns_name: str | None = None) -> AgentRun:
        go_file = tmp_path / f"go-{next(count)}"
        command = [sys.executable, str(PROBE), str(go_file)]
        if netns_name:
            command = ["ip", "netns", "exec", netns_name, *command]
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: move_pid(0, cgroup))
        cleanup.add(lambda: proc.kill() if proc.poll() is None else None)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(list(ops)))
        proc.stdin.close()
        proc.stdin = None  # communicate() must not write again
        ready, _, _ = select.select([proc.stdout], [], [], patience(60))
        if not ready:
            proc.kill()
            raise AssertionError(f"the agent did not start within {patience(60):g} s: {proc.communicate()[1][-800:]}")
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        return AgentRun(proc, go_file)

    return spawn
