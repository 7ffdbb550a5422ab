"""The test environment: where the repository is, whether BPF tests can run
here, how much slower this machine is (emulation), and which exec mode the
running kernel must get."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
# Under software emulation (the VM kernels of tests/kernels/matrix.py) everything
# runs several times slower: waits for the system to get somewhere scale with
# this; what a test asserts about the result never does.
SLOWDOWN = float(os.environ.get("ENFORCER_TEST_SLOWDOWN", "1"))


def patience(seconds: float) -> float:
    """How long to wait for something that takes ``seconds`` on real hardware."""
    return seconds * SLOWDOWN


def environment_problem() -> str | None:
    """Why BPF tests cannot run here, or None."""
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


def expected_exec_mode() -> str:
    """The exec mode this kernel must get (tests/kernels/features.py): one that
    enables BPF-LSM, or is declared to, gets "lsm", never a quiet fallback.
    The mode also decides how packet sockets are stopped."""
    from tests.kernels import features

    return "lsm" if "bpf_lsm" in features.expected() else "tracepoint"


def bpffs() -> Path:
    from enforcer.kernel.pins import bpffs_root

    return bpffs_root()
