"""Exec policy encoding: identities, the folded path trie values, the loader
rule, and the packed bytes against the ctypes mirror of bpf/enforcer.h."""

from __future__ import annotations

import ctypes
import os

from enforcer.kernel import layout
from enforcer.kernel.exec_rules import (
    compile_exec,
    id_key_bytes,
    identity_of,
    kernel_dev,
    loader_identities,
    pack_exec,
    path_key_bytes,
)
from enforcer.policy import ExecPolicy, Verdict


def test_kernel_dev_is_the_super_block_encoding():
    assert kernel_dev(os.makedev(259, 3)) == (259 << 20) | 3
    assert kernel_dev(os.makedev(8, 300)) == (8 << 20) | 300


def test_identity_device_comes_from_the_mount_of_the_file(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    st = os.stat(tmp_path / "f")
    # On a plain file system (ext4, tmpfs) the mount's device is st_dev.
    assert identity_of(f"{tmp_path}/f") == (kernel_dev(st.st_dev), st.st_ino)


def test_keys_match_the_mirror():
    key = layout.ExecKey.from_buffer_copy(id_key_bytes(7, (0x800001, 123456789012)))
    assert (key.generation, key.dev, key.ino) == (7, 0x800001, 123456789012)
    raw = path_key_bytes(0x01020304, b"/usr/bin/git\0")
    assert len(raw) == ctypes.sizeof(layout.PathKey)
    path_key = layout.PathKey.from_buffer_copy(raw)
    assert path_key.prefixlen == 32 + 8 * len(b"/usr/bin/git\0")
    assert path_key.generation_be == int.from_bytes((0x01020304).to_bytes(4, "big"), "little")
    assert path_key.path == b"/usr/bin/git"


def test_entries_resolve_to_identities_and_deny_folds_down_the_path_trie(tmp_path):
    (tmp_path / "tools" / "bad").mkdir(parents=True)
    for name in ("tools/ok", "tools/bad/x", "alone"):
        (tmp_path / name).write_bytes(b"\x7fELF")
    (tmp_path / "link").symlink_to(tmp_path / "alone")
    policy = ExecPolicy(
        Verdict.DENY,
        allow=(f"{tmp_path}/tools/", f"{tmp_path}/tools/bad/x", f"{tmp_path}/link"),
        deny=(f"{tmp_path}/tools/bad/",),
    )
    compiled = compile_exec(policy)
    assert compiled.ids[identity_of(f"{tmp_path}/tools")] == layout.EXEC_DIR_ALLOW
    assert compiled.ids[identity_of(f"{tmp_path}/tools/bad")] == layout.EXEC_DIR_DENY
    assert compiled.ids[identity_of(f"{tmp_path}/alone")] == layout.EXEC_FILE_ALLOW  # the link's target
    paths = compiled.paths
    assert paths[f"{tmp_path}/tools/".encode()] == layout.VERDICT_ALLOW
    assert paths[f"{tmp_path}/tools/bad/x\0".encode()] == layout.VERDICT_DENY  # below a denied directory
    assert paths[f"{tmp_path}/link\0".encode()] == layout.VERDICT_ALLOW


def test_the_loader_is_denied_unless_named_as_a_file():
    loaders = loader_identities()
    assert loaders, "no dynamic loader found on this host"
    loader_path = next(iter(loaders.values()))
    denied = compile_exec(ExecPolicy(Verdict.DENY, allow=("/usr/",)))
    assert all(denied.ids[i] & layout.EXEC_FILE_DENY for i in loaders)
    allowed = compile_exec(ExecPolicy(Verdict.DENY, allow=("/usr/", loader_path)))
    identity = identity_of(loader_path)
    assert allowed.ids[identity] == layout.EXEC_FILE_ALLOW


def test_packed_entries_per_map():
    compiled = compile_exec(ExecPolicy(Verdict.DENY, allow=("/usr/bin/",)))
    packed = pack_exec(compiled, 9)
    assert set(packed) == {layout.MAP_EXEC_IDS, layout.MAP_EXEC_PATHS}
    assert len(packed[layout.MAP_EXEC_IDS]) == len(compiled.ids) and len(packed[layout.MAP_EXEC_PATHS]) == 1
    assert all(len(k) == ctypes.sizeof(layout.ExecKey) and len(v) == 4 for k, v in packed[layout.MAP_EXEC_IDS])
