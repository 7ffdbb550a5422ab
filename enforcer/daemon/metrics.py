"""Prometheus metrics (opt-in: `enforcer daemon --metrics HOST:PORT`).

Denial counts come from the kernel's per-sandbox counters, read at scrape
time: exact (rate-limited events included) and free on the enforcement path.
Only the apply latency histogram and the pipeline lag are kept in userspace.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from enforcer.daemon.audit import AuditFile
from enforcer.daemon.enforcement import Enforcement
from enforcer.kernel import layout
from enforcer.kernel.maps import CounterTotals
from enforcer.kinds import BY_NAME, COUNTED

# The metric's kind label -> the kernel's counter index.
KIND_LABELS = {name: layout.kind_number(BY_NAME[name].kernel_macro) for name in COUNTED}


class PipelineView(Protocol):
    @property
    def next_seq(self) -> int: ...
    @property
    def lag_seconds(self) -> float: ...


class EnforcerCollector(Collector):
    def __init__(self, enforcement: Enforcement, pipeline: PipelineView, audit_log: AuditFile) -> None:
        self._enforcement = enforcement
        self._pipeline = pipeline
        self._audit_log = audit_log

    def collect(self) -> Iterator[Any]:
        denials = CounterMetricFamily("enforcer_denials", "Denials counted in the kernel since the policy was applied",
                                      labels=["sandbox", "kind", "action"])
        lost_by_sandbox = CounterMetricFamily("enforcer_sandbox_events_lost",
                                              "Denial events of the sandbox the ring buffer could not take",
                                              labels=["sandbox"])
        totals: list[tuple[str, CounterTotals]] = self._enforcement.raw_counters()
        for sandbox, counts in totals:
            for kind, index in KIND_LABELS.items():
                denials.add_metric([sandbox, kind, "refused"], counts.refused[index])
                denials.add_metric([sandbox, kind, "audited"], counts.audited[index])
            lost_by_sandbox.add_metric([sandbox], counts.lost)
        yield denials
        yield lost_by_sandbox
        kernel = self._enforcement.kernel_status()
        yield CounterMetricFamily("enforcer_events_lost", "Denial events the ring buffer could not take",
                                  value=kernel.events_lost)
        yield CounterMetricFamily("enforcer_events_unattributed",
                                  "Refusals in a guarded cgroup with no sandbox entry", value=kernel.events_unattributed)
        yield CounterMetricFamily("enforcer_processes_untracked",
                                  "Sandboxed processes the escape table had no room for", value=kernel.processes_untracked)
        yield GaugeMetricFamily("enforcer_policies_active", "Sandboxes with a policy applied", value=len(totals))
        missing = sum(expected - attached for _, _, attached, expected in kernel.programs)
        yield GaugeMetricFamily("enforcer_programs_missing",
                                "Program attachments the kernel does not report (0 when all are in place)",
                                value=missing)
        yield GaugeMetricFamily("enforcer_pipeline_lag_seconds",
                                "From the kernel's denial to its publication, for the latest batch",
                                value=self._pipeline.lag_seconds)
        yield CounterMetricFamily("enforcer_denials_published", "Denials published on the stream (sequence numbers)",
                                  value=self._pipeline.next_seq - 1)
        yield CounterMetricFamily("enforcer_audit_records", "Audit records written since start",
                                  value=self._audit_log.records)
        yield CounterMetricFamily("enforcer_audit_write_failures", "Audit records that could not be written",
                                  value=self._audit_log.failures)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.apply_seconds = Histogram("enforcer_apply_seconds", "Policy apply latency, request to kernel switch",
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                                       registry=self.registry)

    def serve(self, address: str, enforcement: Enforcement, pipeline: PipelineView, audit_log: AuditFile) -> None:
        host, port = parse_address(address)
        self.registry.register(EnforcerCollector(enforcement, pipeline, audit_log))
        start_http_server(port, addr=host, registry=self.registry)


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


class ApplyTimer:
    """Observes an apply's latency into the histogram (no-op without metrics)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        self._started = 0.0

    def __enter__(self) -> ApplyTimer:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._metrics is not None:
            self._metrics.apply_seconds.observe(time.perf_counter() - self._started)
