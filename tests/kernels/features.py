"""What a kernel offers that some end-to-end tests need, and what each kernel the
suite runs on is expected to offer.

A test that needs a feature is marked ``@pytest.mark.needs_kernel(feature, reason)``.
On a kernel without it the test is skipped with that reason, unless the kernel
is expected to offer it: then it fails, so a kernel that should support a
feature can never pass by skipping its tests. A kernel is expected to offer a
feature when it advertises it (``bpf`` in its LSM list) or when the kernel
matrix (tests/kernels/matrix.py) declares it in ``ENFORCER_TEST_KERNEL_OFFERS``."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from enforcer.kernel.loader import lsm_list

FEATURES = {
    "bpf_lsm": "BPF-LSM programs load and attach",
    "no_bpf_lsm": "the kernel does not enable BPF-LSM",
    "io_uring_socket": "io_uring makes sockets (IORING_OP_SOCKET, Linux 5.19; io_uring not disabled)",
    "code_patching": "ftrace patches a chosen function's entry (the function tracer with a filter)",
}
TRACING = Path("/sys/kernel/tracing")


def declared() -> set[str]:
    declared = {name.strip() for name in os.environ.get("ENFORCER_TEST_KERNEL_OFFERS", "").split(",") if name.strip()}
    unknown = declared - FEATURES.keys()
    if unknown:
        raise ValueError(f"ENFORCER_TEST_KERNEL_OFFERS: unknown feature(s) {sorted(unknown)}; known: {sorted(FEATURES)}")
    return declared


def expected() -> set[str]:
    advertised = {"bpf_lsm"} if "bpf" in lsm_list() else {"no_bpf_lsm"}
    return advertised | declared()


@functools.cache
def _bpf_lsm_loads() -> str | None:
    """None if a BPF-LSM program loads and attaches here, else why not."""
    if "bpf" not in lsm_list():
        return f"bpf is not among the kernel's LSMs ({','.join(lsm_list()) or 'none listed'})"
    try:
        from bcc import BPF

        probe = BPF(text=b"struct linux_binprm;\n"
                         b"LSM_PROBE(bprm_check_security, struct linux_binprm *bprm) { return 0; }\n")
        probe.cleanup()
    except Exception as exc:
        return f"a BPF-LSM program does not load: {exc}"
    return None


@functools.cache
def _io_uring_socket() -> str | None:
    from tests.e2e.probe import uring_socket

    try:
        os.close(uring_socket(2, 2))  # AF_INET, SOCK_DGRAM
    except OSError as exc:
        return f"io_uring socket(): {exc}"
    return None


@functools.cache
def _code_patching() -> str | None:
    try:
        if "function" not in (TRACING / "available_tracers").read_text().split():
            return "this kernel has no function tracer"
        (TRACING / "set_ftrace_filter").write_text("")  # clears the filter: what the tests leave anyway
    except OSError as exc:
        return f"ftrace cannot patch here: {exc}"
    return None


def missing(feature: str) -> str | None:
    """None if this kernel offers ``feature``, else why not."""
    if feature == "io_uring_socket":
        return _io_uring_socket()
    if feature == "bpf_lsm":
        return _bpf_lsm_loads()
    if feature == "code_patching":
        return _code_patching()
    if feature == "no_bpf_lsm":
        return None if _bpf_lsm_loads() else "this kernel enables BPF-LSM"
    raise ValueError(f"unknown kernel feature {feature!r}; known: {sorted(FEATURES)}")
