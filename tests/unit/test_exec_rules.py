"""Exec policy encoding: identities, the folded path trie values, the loader
rule, and the packed bytes against the ctypes mirror of bpf/enforcer.h."""

from __future__ import annotations

import ctypes
import os

import pytest

from enforcer.kernel import layout
from enforcer.kernel.exec_rules import (
    allow_runtimes,
    compile_exec,
    id_key_bytes,
    identity_of,
    kernel_dev,
    loader_identities,
    pack_exec,
    path_key_bytes,
)
from enforcer.kernel.rootfs import RootFs
from enforcer.policy import ExecPolicy, PolicyError, Verdict


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


def test_entries_missing_from_a_parent_root_are_left_to_its_containers(tmp_path):
    """A guarded parent's entries may name files only the images have; each
    container's root is strict, and the roots merge into one rule set."""
    image = tmp_path / "image"
    (image / "opt/agent").mkdir(parents=True)
    (image / "opt/agent/run").write_bytes(b"\x7fELF")
    policy = ExecPolicy(Verdict.DENY, allow=("/opt/agent/run", "/usr/bin/"))
    with pytest.raises(PolicyError, match=r"exec.allow\[0\]: /opt/agent/run does not exist on this host"):
        compile_exec(policy)
    parent = compile_exec(policy, missing_ok=True)
    assert identity_of("/usr/bin") in parent.ids and b"/opt/agent/run\0" in parent.paths
    with (pytest.raises(PolicyError, match=r"exec.allow\[1\]: /usr/bin/ does not exist in the root filesystem of c1"),
          RootFs(str(image), name="c1") as rootfs):
        compile_exec(policy, rootfs)
    (image / "usr/bin").mkdir(parents=True)
    with RootFs(str(image)) as rootfs:
        parent.merge(compile_exec(policy, rootfs))
    assert parent.ids[identity_of(f"{image}/opt/agent/run")] == layout.EXEC_FILE_ALLOW
    assert parent.ids[identity_of("/usr/bin")] == parent.ids[identity_of(f"{image}/usr/bin")] == layout.EXEC_DIR_ALLOW


def test_the_hosts_runtimes_are_allowed_unless_denied_by_name(tmp_path):
    for name in ("runc", "crun", "other"):
        (tmp_path / name).write_bytes(b"\x7fELF")
    compiled = compile_exec(ExecPolicy(Verdict.DENY, allow=("/usr/bin/",), deny=(f"{tmp_path}/crun",)))
    allow_runtimes(compiled, (str(tmp_path),))
    assert compiled.ids[identity_of(f"{tmp_path}/runc")] == layout.EXEC_FILE_ALLOW
    assert compiled.ids[identity_of(f"{tmp_path}/crun")] == layout.EXEC_FILE_DENY
    assert identity_of(f"{tmp_path}/other") not in compiled.ids
