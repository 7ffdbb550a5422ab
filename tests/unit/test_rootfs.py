"""Exec entries resolved inside another root (a container's): symlinks and '..'
never lead out of it, and the loaders are the root's own. No privileges needed:
a directory stands in for a container's root."""

from __future__ import annotations

import os

import pytest

from enforcer.kernel import layout
from enforcer.kernel.exec_rules import compile_exec
from enforcer.kernel.rootfs import RootFs
from enforcer.policy import ExecPolicy, PolicyError, Verdict


@pytest.fixture
def image(tmp_path):
    """A small root: /bin/busybox, /bin/sh -> /bin/busybox (absolute, as images
    have them), a loader, and links that try to leave the root."""
    root = tmp_path / "root"
    for directory in ("bin", "lib64", "etc"):
        (root / directory).mkdir(parents=True)
    (root / "bin/busybox").write_bytes(b"\x7fELF image")
    (root / "bin/sh").symlink_to("/bin/busybox")
    (root / "lib64/ld-linux-x86-64.so.2").write_bytes(b"\x7fELF loader")
    (root / "etc/hosts").symlink_to("../../../../../../etc/hostname")  # the host's, if followed outside
    (tmp_path / "outside").write_text("host file")
    (root / "bin/escape").symlink_to(str(tmp_path / "outside"))
    return root


def test_symlinks_resolve_inside_the_root(image):
    with RootFs(str(image)) as rootfs:
        assert rootfs.stat("/bin/sh").st_ino == os.stat(image / "bin/busybox").st_ino
        with pytest.raises(FileNotFoundError):
            rootfs.stat("/etc/hosts")  # the host's /etc/hostname is not in this root
        with pytest.raises(FileNotFoundError):
            rootfs.stat("/bin/escape")  # an absolute link names a path inside the root
        assert rootfs.stat("/../../bin/busybox").st_ino == os.stat(image / "bin/busybox").st_ino
        assert sorted(rootfs.listdir("/bin")) == ["busybox", "escape", "sh"]
        assert rootfs.listdir("/bin/busybox") == [] and rootfs.where == "in the container's root filesystem"


def test_a_container_policy_names_the_roots_files_and_loaders(image):
    busybox = os.stat(image / "bin/busybox")
    loader = os.stat(image / "lib64/ld-linux-x86-64.so.2")
    with RootFs(str(image)) as rootfs:
        compiled = compile_exec(ExecPolicy(Verdict.DENY, allow=("/bin/sh",)), rootfs)
    inodes = {ino: bits for (_, ino), bits in compiled.ids.items()}
    assert inodes[busybox.st_ino] == layout.EXEC_FILE_ALLOW
    assert inodes[loader.st_ino] == layout.EXEC_FILE_DENY  # the image's loader, not only the host's
    assert compiled.paths == {b"/bin/sh\0": layout.VERDICT_ALLOW}


def test_an_entry_the_root_lacks_is_refused_by_field(image):
    with RootFs(str(image)) as rootfs, pytest.raises(
            PolicyError, match=r"exec\.deny\[0\]: /usr/bin/ssh does not exist in the container's root filesystem"):
        compile_exec(ExecPolicy(Verdict.ALLOW, deny=("/usr/bin/ssh",)), rootfs)
