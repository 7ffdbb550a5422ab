"""The BTF reader that supplies kernel-internal field offsets and enum values to the BPF programs."""

from __future__ import annotations

import struct

import pytest

from enforcer.kernel.btf import BTF_MAGIC, BtfError, KernelTypes, kernel_constants


def blob() -> bytes:
    strings = b"\0int\0inner\0outer\0a\0kind\0ONE\0TWO\0"
    name = {s.decode(): strings.index(b"\0" + s + b"\0") + 1
            for s in (b"int", b"inner", b"outer", b"a", b"kind", b"ONE", b"TWO")}
    types = b"".join([
        struct.pack("<III", name["int"], 1 << 24, 4) + struct.pack("<I", 32),           # 1: int
        struct.pack("<III", 0, (5 << 24) | 1, 4) + struct.pack("<III", name["inner"], 1, 0),  # 2: union { int inner; }
        struct.pack("<III", name["outer"], (4 << 24) | 2, 12)                              # 3: struct outer
        + struct.pack("<III", name["a"], 1, 0) + struct.pack("<III", 0, 2, 64),             # a; union at byte 8
        struct.pack("<III", name["kind"], (6 << 24) | 2, 4)                                # 4: enum kind
        + struct.pack("<Ii", name["ONE"], 1) + struct.pack("<Ii", name["TWO"], 7),
    ])
    header = struct.pack("<HBBIIIII", BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_members_of_anonymous_unions_are_found_at_their_c_offset():
    types = KernelTypes(blob())
    assert types.offset("outer", "a") == 0
    assert types.offset("outer", "inner") == 8
    with pytest.raises(BtfError, match="has no member nope"):
        types.offset("outer", "nope")
    with pytest.raises(BtfError, match="struct missing is not in"):
        types.offset("missing", "a")


def test_enum_values_are_found_by_enum_and_enumerator():
    types = KernelTypes(blob())
    assert (types.enum_value("kind", "ONE"), types.enum_value("kind", "TWO")) == (1, 7)
    with pytest.raises(BtfError, match="enum kind has no THREE"):
        types.enum_value("kind", "THREE")
    with pytest.raises(BtfError, match="enum missing is not in"):
        types.enum_value("missing", "ONE")


def test_running_kernel_offsets():
    offsets = kernel_constants()
    # struct path { struct vfsmount *mnt; struct dentry *dentry; } has been stable for decades.
    assert (offsets["ENF_OFF_PATH_MNT"], offsets["ENF_OFF_PATH_DENTRY"]) == (0, 8)
    assert all(value >= 0 for value in offsets.values())
