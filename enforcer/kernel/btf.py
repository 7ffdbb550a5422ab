"""Field offsets of kernel-internal structs, read from the running kernel's BTF.

The exec program reads a few fields of ``linux_binprm``, ``file``, ``inode``,
``dentry``, ``super_block``, ``mount`` and ``task_struct``. Their layout differs
between kernel builds and the header tree bcc compiles against is not the running
kernel's, so every such offset comes from /sys/kernel/btf/vmlinux at start-up and
is passed to the compiler as a constant, as are the values of the few internal
enums the LSM hooks compare against. Only the parts of the BTF format needed to
find struct members and enum values are decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
BTF_MAGIC = 0xEB9F

KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
# Bytes that follow the 12-byte btf_type header, by kind: fixed part and per-vlen part.
_EXTRA = {
    1: (4, 0),    # INT
    2: (0, 0),    # PTR
    3: (12, 0),   # ARRAY
    4: (0, 12),   # STRUCT
    5: (0, 12),   # UNION
    6: (0, 8),    # ENUM
    7: (0, 0),    # FWD
    8: (0, 0),    # TYPEDEF
    9: (0, 0),    # VOLATILE
    10: (0, 0),   # CONST
    11: (0, 0),   # RESTRICT
    12: (0, 0),   # FUNC
    13: (0, 8),   # FUNC_PROTO
    14: (4, 0),   # VAR
    15: (0, 12),  # DATASEC
    16: (0, 0),   # FLOAT
    17: (4, 0),   # DECL_TAG
    18: (0, 0),   # TYPE_TAG
    19: (0, 12),  # ENUM64
}


class BtfError(RuntimeError):
    pass


@dataclass(frozen=True)
class _Member:
    name: str
    type_id: int
    bit_offset: int


@dataclass(frozen=True)
class _Composite:
    name: str
    size: int
    members: tuple[_Member, ...]


class KernelTypes:
    """Struct and union definitions of one BTF blob, by name and by type id."""

    def __init__(self, data: bytes) -> None:
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
        if magic != BTF_MAGIC:
            raise BtfError("not a little-endian BTF blob")
        self._data = data
        self._strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        # One pass records where each struct/union and typedef is; members are
        # decoded only for the few structs asked for (start-up time).
        self._composites: dict[int, int] = {}  # type id -> position of its btf_type
        self._by_name: dict[str, int] = {}
        self._typedefs: dict[int, int] = {}   # modifiers and typedefs, to see through them
        self._enums: dict[str, int] = {}      # enum name -> position of its btf_type
        pos, end, type_id = hdr_len + type_off, hdr_len + type_off + type_len, 0
        unpack_type = struct.Struct("<III").unpack_from
        extra = _EXTRA
        while pos < end:
            type_id += 1
            name_off, info, size_or_type = unpack_type(data, pos)
            kind = (info >> 24) & 0x1F
            try:
                fixed, per = extra[kind]
            except KeyError:
                raise BtfError(f"unknown BTF kind {kind} at type {type_id}") from None
            if kind in (KIND_STRUCT, KIND_UNION):
                self._composites[type_id] = pos
                if name_off and size_or_type:
                    self._by_name.setdefault(_string(self._strings, name_off), type_id)
            elif kind == KIND_ENUM and name_off:
                self._enums.setdefault(_string(self._strings, name_off), pos)
            elif kind in (8, 9, 10, 11, 18):
                self._typedefs[type_id] = size_or_type
            pos += 12 + fixed + per * (info & 0xFFFF)

    def _composite(self, type_id: int) -> _Composite | None:
        pos = self._composites.get(type_id)
        if pos is None:
            return None
        unpack_type = struct.Struct("<III").unpack_from
        name_off, info, size = unpack_type(self._data, pos)
        kind_flag = info >> 31
        members = []
        for i in range(info & 0xFFFF):
            m_name, m_type, m_offset = unpack_type(self._data, pos + 12 + 12 * i)
            bit_offset = m_offset & 0xFFFFFF if kind_flag else m_offset
            members.append(_Member(_string(self._strings, m_name), m_type, bit_offset))
        return _Composite(_string(self._strings, name_off), size, tuple(members))

    @classmethod
    def running_kernel(cls) -> KernelTypes:
        try:
            return cls(VMLINUX.read_bytes())
        except OSError as exc:
            raise BtfError(f"cannot read {VMLINUX}: {exc.strerror} (the kernel needs CONFIG_DEBUG_INFO_BTF)") from exc

    def offset(self, struct_name: str, member: str) -> int:
        """Byte offset of ``member`` in ``struct struct_name``, looking through
        anonymous structs and unions the way C does."""
        type_id = self._by_name.get(struct_name)
        if type_id is None:
            raise BtfError(f"struct {struct_name} is not in the kernel's BTF")
        found = self._find(type_id, member)
        if found is None:
            raise BtfError(f"struct {struct_name} has no member {member} in this kernel")
        if found % 8:
            raise BtfError(f"{struct_name}.{member} is a bit field")
        return found // 8

    def enum_value(self, enum_name: str, name: str) -> int:
        """Value of the enumerator ``name`` of ``enum enum_name``."""
        pos = self._enums.get(enum_name)
        if pos is None:
            raise BtfError(f"enum {enum_name} is not in the kernel's BTF")
        _name_off, info, _size = struct.unpack_from("<III", self._data, pos)
        signed = info >> 31
        for i in range(info & 0xFFFF):
            e_name, e_value = struct.unpack_from("<Ii" if signed else "<II", self._data, pos + 12 + 8 * i)
            if _string(self._strings, e_name) == name:
                return int(e_value)
        raise BtfError(f"enum {enum_name} has no {name} in this kernel")

    def _find(self, type_id: int, member: str) -> int | None:
        composite = self._composite(self._resolve(type_id))
        if composite is None:
            return None
        for m in composite.members:
            if m.name == member:
                return m.bit_offset
            if not m.name:
                inner = self._find(m.type_id, member)
                if inner is not None:
                    return m.bit_offset + inner
        return None

    def _resolve(self, type_id: int) -> int:
        while type_id in self._typedefs:
            type_id = self._typedefs[type_id]
        return type_id


def _string(strings: bytes, offset: int) -> str:
    return strings[offset: strings.index(b"\0", offset)].decode()


# (C macro name, struct, member). The exec and escape programs use exactly these.
EXEC_OFFSETS = (
    ("ENF_OFF_BPRM_FILE", "linux_binprm", "file"),
    ("ENF_OFF_BPRM_FILENAME", "linux_binprm", "filename"),
    ("ENF_OFF_BPRM_INTERP", "linux_binprm", "interp"),
    ("ENF_OFF_FILE_PATH", "file", "f_path"),
    ("ENF_OFF_PATH_MNT", "path", "mnt"),
    ("ENF_OFF_PATH_DENTRY", "path", "dentry"),
    ("ENF_OFF_INODE_INO", "inode", "i_ino"),
    ("ENF_OFF_INODE_SB", "inode", "i_sb"),
    ("ENF_OFF_INODE_NLINK", "inode", "__i_nlink"),
    ("ENF_OFF_SB_DEV", "super_block", "s_dev"),
    ("ENF_OFF_DENTRY_PARENT", "dentry", "d_parent"),
    ("ENF_OFF_DENTRY_INODE", "dentry", "d_inode"),
    ("ENF_OFF_VFSMOUNT_ROOT", "vfsmount", "mnt_root"),
    ("ENF_OFF_MOUNT_MNT", "mount", "mnt"),
    ("ENF_OFF_MOUNT_PARENT", "mount", "mnt_parent"),
    ("ENF_OFF_MOUNT_MOUNTPOINT", "mount", "mnt_mountpoint"),
    ("ENF_OFF_TASK_REAL_PARENT", "task_struct", "real_parent"),
    ("ENF_OFF_TASK_TGID", "task_struct", "tgid"),
    ("ENF_OFF_TASK_PID", "task_struct", "pid"),
    ("ENF_OFF_TASK_CGROUPS", "task_struct", "cgroups"),
    ("ENF_OFF_CSS_SET_DFL_CGRP", "css_set", "dfl_cgrp"),
    ("ENF_OFF_CGROUP_LEVEL", "cgroup", "level"),
    ("ENF_OFF_CGROUP_ANCESTORS", "cgroup", "ancestors"),
    ("ENF_OFF_CGROUP_KN", "cgroup", "kn"),
    ("ENF_OFF_KERNFS_NODE_ID", "kernfs_node", "id"),
    ("ENF_OFF_KERNFS_NODE_PRIV", "kernfs_node", "priv"),
    ("ENF_OFF_FILE_MODE", "file", "f_mode"),
    ("ENF_OFF_DENTRY_NAME", "dentry", "d_name"),
    ("ENF_OFF_QSTR_NAME", "qstr", "name"),
    ("ENF_OFF_SB_MAGIC", "super_block", "s_magic"),
    ("ENF_OFF_INODE_PRIVATE", "inode", "i_private"),
    ("ENF_OFF_TASK_THREAD_INFO", "task_struct", "thread_info"),
    ("ENF_OFF_THREAD_INFO_STATUS", "thread_info", "status"),
)

# (C macro name, enum, enumerator): what the LSM hooks of bpf/syscall.bpf.c are
# told about (which file or image the kernel is loading).
SYSCALL_ENUMS = (
    ("ENF_READING_MODULE", "kernel_read_file_id", "READING_MODULE"),
    ("ENF_READING_KEXEC_IMAGE", "kernel_read_file_id", "READING_KEXEC_IMAGE"),
    ("ENF_READING_KEXEC_INITRAMFS", "kernel_read_file_id", "READING_KEXEC_INITRAMFS"),
    ("ENF_LOADING_MODULE", "kernel_load_data_id", "LOADING_MODULE"),
    ("ENF_LOADING_KEXEC_IMAGE", "kernel_load_data_id", "LOADING_KEXEC_IMAGE"),
)


def kernel_constants(types: KernelTypes | None = None) -> dict[str, int]:
    """Every ENF_OFF_* offset and ENF_* enum value the BPF programs are compiled with."""
    types = types or KernelTypes.running_kernel()
    return ({macro: types.offset(struct_name, member) for macro, struct_name, member in EXEC_OFFSETS}
            | {macro: types.enum_value(enum, name) for macro, enum, name in SYSCALL_ENUMS})
