"""A daemon taking over carries on from its audit log only for the ring buffer
that log was read from.

Found with real containers: daemons on the default pin and state directories,
after a day of runs that included an uninstall, counted refusals that never
reached the stream. The audit log's last ring position came from the ring
buffer before the uninstall (far ahead of the new one, which counts from 0), and
every record of the new ring was skipped as "already written down". Not marked
``kernel``: what is tested is the daemon's bookkeeping, the same on every kernel.
"""

from __future__ import annotations

from tests.e2e.harness.daemon import DaemonProcess
from tests.e2e.harness.network import HOST4
from tests.e2e.harness.probes import Probe
from tests.e2e.harness.waits import wait_denials
from tests.e2e.test_audit import records
from tests.e2e.test_network import policy, sendto


def test_a_position_from_an_uninstalled_ring_does_not_hide_the_new_rings_denials(
        tmp_path, make_cgroup, sandbox_id, probe: Probe):
    cgroup = make_cgroup()
    first = DaemonProcess(tmp_path, "--events-per-sec", "0")
    first.start()
    try:
        with first.client() as enf:
            enf.apply(policy(sandbox_id, cgroup))
        assert probe(cgroup, {**sendto(HOST4, 9), "repeat": 2000}) == ["EPERM*2000"]
        with first.client() as enf:
            assert len(wait_denials(enf, sandbox_id, 2000)) == 2000
    finally:
        first.stop()  # and uninstall: its ring buffer is gone, positions recorded from it stay in the log
    old = [r for r in records(first.audit_path) if r["event"] == "denial"]
    assert old[-1]["ring_pos"] > 2000 * 32

    # Same audit log and state directory, new pins: a fresh ring, then a take-over of it.
    second = DaemonProcess(tmp_path, "--events-per-sec", "0")
    second.start()
    with second.client() as enf:
        enf.apply(policy(sandbox_id, cgroup))
    second.stop(keep_enforcing=True)
    second.start()
    try:
        assert probe(cgroup, sendto(HOST4, 9)) == ["EPERM"]
        with second.client() as enf:
            streamed = wait_denials(enf, sandbox_id, 1)
            stats = enf.stats(sandbox_id)
    finally:
        second.stop()
    assert len(streamed) == 1 and stats.events_lost == 0
    new = [r for r in records(second.audit_path) if r["event"] == "denial"][len(old):]
    assert [(r["seq"], r["ring_pos"]) for r in new] == [(old[-1]["seq"] + 1, 0)]
    assert new[0]["ring"] != old[-1]["ring"]
