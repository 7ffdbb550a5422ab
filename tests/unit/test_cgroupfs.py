"""cgroup v2 helpers on a fake tree (no privileges needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.cgroupfs import CgroupError, cgroup2_mount, create_target_cgroup, find_container_cgroup, remove_created
from enforcer.policy import PolicyError, Target, TargetKind

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


def test_a_created_target_makes_what_is_missing_and_undoes_only_that(tmp_path):
    (tmp_path / "rollouts").mkdir()
    made = create_target_cgroup(Target(TargetKind.CGROUP, "rollouts/ppo/17", create=True), tmp_path)
    assert made == [tmp_path / "rollouts/ppo", tmp_path / "rollouts/ppo/17"] and made[-1].is_dir()
    assert create_target_cgroup(Target(TargetKind.CGROUP, str(tmp_path / "rollouts/ppo/17"), create=True),
                                tmp_path) == []  # there already
    remove_created(made)
    assert [p.name for p in tmp_path.iterdir()] == ["rollouts"] and not any((tmp_path / "rollouts").iterdir())


def test_a_created_target_stays_below_the_mount(tmp_path):
    with pytest.raises(PolicyError, match=r"target\.cgroup: /elsewhere/x is not below the cgroup2 mount"):
        create_target_cgroup(Target(TargetKind.CGROUP, "/elsewhere/x", create=True), tmp_path / "mount")
    (tmp_path / "file").write_text("")
    with pytest.raises(PolicyError, match="cannot create cgroup"):
        create_target_cgroup(Target(TargetKind.CGROUP, "file/x", create=True), tmp_path)
