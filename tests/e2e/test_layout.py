"""The ctypes mirror in enforcer/kernel/layout.py against what bcc compiled
from bpf/enforcer.h: same size, same fields at the same offsets."""

from __future__ import annotations

import ctypes

import pytest

from enforcer.kernel import layout
from enforcer.kernel.loader import bpf_source, compile_flags
from enforcer.settings import EXEC_MODE_TRACEPOINT

pytestmark = pytest.mark.kernel  # the outcome depends on the kernel: runs on each (make test-kernels)


@pytest.fixture(scope="module")
def compiled():
    from bcc import BPF

    bpf = BPF(text=bpf_source().encode(), cflags=compile_flags(EXEC_MODE_TRACEPOINT))
    yield bpf
    bpf.cleanup()


def fields(struct: type[ctypes.Structure]) -> list[tuple[str, int, int]]:
    return [(name, getattr(struct, name).offset, getattr(struct, name).size) for name, *_ in struct._fields_]


@pytest.mark.parametrize(("map_name", "side", "mirror"), layout.MAP_LAYOUTS,
                         ids=[f"{m}.{s}" for m, s, _ in layout.MAP_LAYOUTS])
def test_mirror_matches_compiled_layout(compiled, map_name, side, mirror):
    kernel_type = getattr(compiled[map_name], side)
    if issubclass(kernel_type, ctypes.Array):  # per-CPU maps: one value per CPU
        kernel_type = kernel_type._type_
    assert ctypes.sizeof(kernel_type) == ctypes.sizeof(mirror)
    assert fields(kernel_type) == fields(mirror)


def test_nested_port_rule_layout(compiled):
    kernel_rule = compiled["rules"].Leaf._fields_[2][1]._type_
    assert fields(kernel_rule) == fields(layout.PortRule)
