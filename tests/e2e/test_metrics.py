"""The opt-in Prometheus endpoint: exact denial counts from the kernel by
sandbox, kind and action, and the daemon's own health figures."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness.daemon import DaemonProcess
from tests.e2e.harness.network import HOST4
from tests.e2e.harness.probes import Probe
from tests.e2e.test_daemon import free_port
from tests.e2e.test_network import policy, sendto

pytestmark = pytest.mark.kernel  # the outcome depends on the kernel: runs on each (make test-kernels)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_are_served_when_asked_for(tmp_path, make_cgroup, sandbox_id, probe: Probe):
    port = free_port()
    proc = DaemonProcess(tmp_path, "--metrics", f"127.0.0.1:{port}", "--events-per-sec", "1")
    proc.start()
    try:
        cg = make_cgroup()
        with proc.client() as enf:
            enf.apply(policy(sandbox_id, cg))
        assert probe(cg, {**sendto(HOST4, 9), "repeat": 5}) == ["EPERM*5"]
        samples = scrape(port)
        # Exact although the event budget (1/s) reported only one of them.
        assert samples[("enforcer_denials_total", (("action", "refused"), ("kind", "sendmsg"),
                                                    ("sandbox", sandbox_id)))] == 5
        assert samples[("enforcer_denials_total", (("action", "refused"), ("kind", "connect"),
                                                    ("sandbox", sandbox_id)))] == 0
        assert samples[("enforcer_policies_active", ())] == 1
        assert samples[("enforcer_apply_seconds_count", ())] == 1
        assert samples[("enforcer_programs_missing", ())] == 0
        assert samples[("enforcer_events_lost_total", ())] == 0
        assert ("enforcer_pipeline_lag_seconds", ()) in samples
    finally:
        assert proc.stop() == 0


def test_a_bad_metrics_address_is_refused(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "enforcer.cli", "daemon", "--socket", str(tmp_path / "s.sock"),
                           "--state-dir", str(tmp_path / "state"),
                           "--audit-log", str(tmp_path / "a.jsonl"), "--metrics", "nonsense"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "--metrics: expected HOST:PORT, got 'nonsense'" in done.stderr
