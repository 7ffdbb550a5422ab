"""cgroup v2 helpers on a fake tree (no privileges needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.cgroupfs import CgroupError, cgroup2_mount, find_container_cgroup
from enforcer.policy import PolicyError

CID = "0123456789abcdef" * 4


def test_cgroup2_mount_is_read_from_mounts(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    assert cgroup2_mount(str(mounts)) == Path("/sys/fs/cgroup/unified")
    mounts.write_text("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n")
    with pytest.raises(CgroupError, match="no cgroup v2"):
        cgroup2_mount(str(mounts))


@pytest.mark.parametrize(
    "leaf",
    [
        f"docker/{CID}",
        f"system.slice/docker-{CID}.scope",
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{CID}.scope",
        f"kubepods/besteffort/pod5678/{CID}",
        f"machine.slice/crio-{CID}.scope",
        f"machine.slice/libpod-{CID}.scope",
    ],
)
def test_container_ids_resolve_by_runtime_conventions(tmp_path, leaf):
    target = tmp_path / leaf
    target.mkdir(parents=True)
    (target / "nested-child").mkdir()
    assert find_container_cgroup(CID, tmp_path) == target
    assert find_container_cgroup(CID[:12], tmp_path) == target


def test_unknown_and_ambiguous_container_ids(tmp_path):
    with pytest.raises(PolicyError, match="no cgroup found"):
        find_container_cgroup(CID, tmp_path)
    (tmp_path / "docker" / CID).mkdir(parents=True)
    (tmp_path / "docker" / (CID[:12] + "f" * 52)).mkdir()
    with pytest.raises(PolicyError, match="ambiguous"):
        find_container_cgroup(CID[:12], tmp_path)
