"""Real container runtimes for the tests: Docker (docker.io, runc) and Podman
(podman, crun) from the distro, each run privately for the test session, and a
test image built from the distro's busybox-static (no registry is reachable).

Docker gets its own dockerd (socket, data root, exec root, pid file under
/run and /var/lib ``enforcer-test-docker``), with no default bridge and no
iptables or forwarding changes; containers run with ``--network none`` (their
own loopback only). Podman gets its own storage root. An operator's own Docker
or Podman, if any, is not touched.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from enforcer.oci import hook_command, podman_command, write_hooks_d

IMAGE = "enforcer-test/busybox:1"
DOCKER_DIR = Path("/run/enforcer-test-docker")
DOCKER_DATA = Path("/var/lib/enforcer-test-docker")
PODMAN_ROOT = Path("/var/lib/enforcer-test-podman")
PODMAN_RUNROOT = Path("/run/enforcer-test-podman")
BUSYBOX = Path("/bin/busybox")  # busybox-static: one static binary, no loader or libraries needed
# One list with scripts/bootstrap.sh --containers.
PACKAGES = [line.strip() for line in (Path(__file__).parents[2] / "scripts/container-packages").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


class RuntimeUnavailable(RuntimeError):
    pass


def _installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return "ok installed" in done.stdout


def ensure_packages(packages: list[str]) -> None:
    """apt-get install what is missing (the distro's packages; as vm.sh does for qemu)."""
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # No init system starts services here; policy-rc.d keeps the packages' scripts from trying.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        done = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                              capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
            done = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                                  capture_output=True, text=True, env=env, timeout=900)
    finally:
        if made_policy:
            policy.unlink()
    if done.returncode != 0:
        raise RuntimeUnavailable(f"apt-get install {' '.join(missing)} failed:\n{done.stderr[-2000:]}")


def busybox_rootfs_tar() -> bytes:
    """A root filesystem of one static busybox and its applets as symlinks, as a tar."""
    applets = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "tmp", "etc", "proc", "sys", "dev", "root"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in applets:
            name = applet.lstrip("/")
            if name == "bin/busybox":
                continue
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/bin/busybox"
            tar.addfile(info)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class Runtime:
    """One runtime's CLI with the options that point it at the private instance."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 120, check: bool = True,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.argv, *args], capture_output=True, timeout=timeout, input=stdin,
                              env={**os.environ, **self.env})
        result = subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                             done.stderr.decode(errors="replace"))
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(result.args)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
        return result

    def import_image(self) -> None:
        if self.run("image", "inspect", IMAGE, check=False).returncode == 0:
            return
        self.run("import", "-", IMAGE, stdin=busybox_rootfs_tar())

    def init_pid(self, container: str) -> int:
        return int(self.run("inspect", "--format", "{{.State.Pid}}", container).stdout.strip())


# What the OCI hook finds: the daemon under test (a link the tests point at its
# socket) and the policies containers name.
HOOK_SOCKET = DOCKER_DIR / "enforcer.sock"
HOOK_POLICIES = DOCKER_DIR / "policies"
PODMAN_HOOKS = PODMAN_RUNROOT / "hooks.d"
PODMAN_HOOKS_EVERY = PODMAN_RUNROOT / "hooks-every.d"  # for containers that name no policy (guarded parents)


def point_hooks_at(daemon_socket: str) -> None:
    """Make the hooks talk to this daemon (a symlink: the runtimes' config stays)."""
    HOOK_POLICIES.mkdir(parents=True, exist_ok=True)
    scratch = HOOK_SOCKET.with_name("enforcer.sock.new")
    scratch.unlink(missing_ok=True)
    scratch.symlink_to(daemon_socket)
    os.replace(scratch, HOOK_SOCKET)


class DockerDaemon:
    """A private dockerd. Its daemon.json has the ``enforcer`` runtime, as an
    operator would set it up: ``enforcer oci-runtime`` in front of runc."""

    def __init__(self) -> None:
        self.socket = DOCKER_DIR / "docker.sock"
        self.log = DOCKER_DIR / "dockerd.log"
        self.config = DOCKER_DIR / "daemon.json"
        self.proc: subprocess.Popen[bytes] | None = None
        # The distro's client, not whatever else is first on PATH.
        self.cli = Runtime("docker", ["/usr/bin/docker", "--host", f"unix://{self.socket}"])

    def start(self, timeout: float = 60) -> Runtime:
        ensure_packages(PACKAGES)
        DOCKER_DIR.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps({"runtimes": {"enforcer": {
            "path": str(Path(sys.executable).with_name("enforcer")),
            "runtimeArgs": ["--socket", str(HOOK_SOCKET), "oci-runtime", "--policy-dir", str(HOOK_POLICIES), "--"],
        }}}))
        if self.cli.run("version", check=False, timeout=10).returncode == 0:
            if "enforcer" in self.cli.run("info", "--format", "{{json .Runtimes}}").stdout:
                return self.cli  # left running by an earlier session: reuse it
            self._stop_earlier()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["/usr/sbin/dockerd", "--host", f"unix://{self.socket}", "--data-root", str(DOCKER_DATA),
                 "--exec-root", str(DOCKER_DIR / "exec"), "--pidfile", str(DOCKER_DIR / "dockerd.pid"),
                 "--config-file", str(self.config),
                 "--bridge", "none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
                 "--exec-opt", "native.cgroupdriver=cgroupfs", "--storage-driver", "overlay2"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.cli.run("version", check=False, timeout=10).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeUnavailable(f"dockerd did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return self.cli

    def _stop_earlier(self) -> None:
        """A dockerd of an earlier session without the runtime: ended by its pid file."""
        try:
            pid = int((DOCKER_DIR / "dockerd.pid").read_text())
            os.kill(pid, 15)
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + 30
        while self.cli.run("version", check=False, timeout=10).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def podman(mount: Path) -> Runtime:
    ensure_packages(PACKAGES)
    if shutil.which("podman") is None:
        raise RuntimeUnavailable("podman is not on PATH after installing it")
    # As root Podman gives a container open-file and process limits the runtime
    # may not be able to set where the caller lacks CAP_SYS_RESOURCE (as here:
    # "setrlimit RLIMIT_NOFILE: Operation not permitted"); lowering always works.
    PODMAN_RUNROOT.mkdir(parents=True, exist_ok=True)
    conf = PODMAN_RUNROOT / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n')
    # The hooks as an operator would install them in /usr/share/containers/oci/hooks.d.
    write_hooks_d(PODMAN_HOOKS, hook_command(str(HOOK_SOCKET), str(HOOK_POLICIES)))
    write_hooks_d(PODMAN_HOOKS_EVERY, hook_command(str(HOOK_SOCKET), str(HOOK_POLICIES)), every_container=True)
    return Runtime("podman", podman_command(PODMAN_ROOT, PODMAN_RUNROOT, PODMAN_HOOKS, mount),
                   env={"CONTAINERS_CONF": str(conf)})



def hooked(runtime: Runtime) -> tuple[Runtime, list[str]]:
    """The runtime, and the run flags, by which the hook runs for a container
    that names no policy (one started in a guarded parent): Podman with the
    every-container hooks.d as its --hooks-dir, Docker with ``--runtime enforcer``."""
    if runtime.name == "podman":
        argv = [str(PODMAN_HOOKS_EVERY) if arg == str(PODMAN_HOOKS) else arg for arg in runtime.argv]
        return Runtime(runtime.name, argv, runtime.env), []
    return runtime, ["--runtime", "enforcer"]
