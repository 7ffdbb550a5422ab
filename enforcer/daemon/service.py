"""The gRPC service: requests in, status codes out. Policy semantics live in
enforcer.policy and enforcer.daemon.enforcement; this only translates."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import structlog

from enforcer import wire
from enforcer.daemon.audit import AUDIT_LOGGER, AuditFile
from enforcer.daemon.dns import ForwarderError
from enforcer.daemon.enforcement import CallerGone, Enforcement
from enforcer.daemon.metrics import ApplyTimer, Metrics
from enforcer.daemon.pipeline import DenialPipeline, matches
from enforcer.daemon.store import ApplyConflict, CapacityExhausted, NestingConflict, SandboxNotFound, SandboxRecord
from enforcer.kernel import layout
from enforcer.kernel.guard import KernelError, MapFull
from enforcer.kinds import BY_NAME, COUNTED
from enforcer.policy import PolicyError
from enforcer.v1 import enforcer_pb2 as pb
from enforcer.v1 import enforcer_pb2_grpc as pb_grpc

log = structlog.get_logger("enforcer.service")
audit = structlog.get_logger(AUDIT_LOGGER)


def applied_to_proto(record: SandboxRecord, whole_policy: bool = True) -> pb.AppliedPolicy:
    """``whole_policy=False`` fills in only the sandbox id (the ApplyPolicy reply:
    the caller has the rest, and a large policy is not worth echoing)."""
    applied = pb.AppliedPolicy(
        cgroup_path=str(record.cgroup.path),
        cgroup_id=record.cgroup.id,
        generation=record.generation,
        applied_unix_ns=record.applied_unix_ns,
        quarantined=record.quarantined,
        frozen=record.frozen,
        containers=[pb.ContainerRoot(container=c.container, cgroup_path=str(c.cgroup.path), root=c.root)
                    for c in record.containers.values()],
    )
    if whole_policy:
        applied.policy.CopyFrom(wire.policy_to_proto(record.policy))
    else:
        applied.policy.sandbox = record.policy.sandbox
    return applied


def _caller_waiting(context: grpc.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return bool(context.is_active()) and (remaining is None or remaining > 0)


def _peer(context: grpc.ServicerContext) -> str:
    return str(context.peer())


class EnforcerService(pb_grpc.EnforcerServicer):
    def __init__(self, enforcement: Enforcement, pipeline: DenialPipeline, audit_log: AuditFile | None = None,
                 metrics: Metrics | None = None) -> None:
        self._enforcement = enforcement
        self._pipeline = pipeline
        self._audit_log = audit_log
        self._metrics = metrics

    def _abort(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
        log.info("request_refused", code=code.name, reason=message, peer=_peer(context))
        context.abort(code, message)

    def _require_sandbox(self, sandbox: str, context: grpc.ServicerContext) -> None:
        if not sandbox:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "sandbox: is required")

    def ApplyPolicy(self, request: pb.ApplyPolicyRequest, context: grpc.ServicerContext) -> pb.ApplyPolicyResponse:
        if not request.HasField("policy"):
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "policy: is required")
        if not _caller_waiting(context):  # it has given up: change nothing
            self._abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the apply began")
        with self._apply_refusals(context):
            policy = wire.policy_from_proto(request.policy)
            # Hashing the request's bytes, not re-encoding the policy: 0.06 ms, not 1.6 ms at 1,000 rules.
            with ApplyTimer(self._metrics):
                result = self._enforcement.apply(policy, wire.message_wire(request.policy),
                                                 still_wanted=lambda: _caller_waiting(context))
        record = result.record
        audit.info("policy_applied", sandbox=policy.sandbox, replaced=result.replaced, generation=record.generation,
                   cgroup=str(record.cgroup.path), mode=policy.mode.value, labels=policy.label_map,
                   policy_sha256=record.policy_sha256, client=_peer(context))
        return pb.ApplyPolicyResponse(applied=applied_to_proto(record, whole_policy=False), replaced=result.replaced)

    @contextmanager
    def _apply_refusals(self, context: grpc.ServicerContext) -> Iterator[None]:
        """Why an apply changed nothing, as a status code."""
        try:
            yield
        except PolicyError as exc:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except CallerGone as exc:
            self._abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        except NestingConflict as exc:
            self._abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ForwarderError as exc:
            self._abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"network.dns: {exc}")
        except ApplyConflict as exc:
            self._abort(context, grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except SandboxNotFound as exc:
            self._abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except (CapacityExhausted, MapFull) as exc:
            self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except KernelError as exc:
            log.error("apply_failed", error=str(exc))
            self._abort(context, grpc.StatusCode.INTERNAL, f"kernel refused the policy: {exc}")
        except OSError as exc:  # the state directory (disk full): nothing was applied
            log.error("apply_failed", error=str(exc))
            self._abort(context, grpc.StatusCode.INTERNAL, f"saving the policy failed: {exc.strerror or exc}")

    def AddContainer(self, request: pb.AddContainerRequest, context: grpc.ServicerContext) -> pb.AppliedPolicy:
        with self._apply_refusals(context):
            record = self._enforcement.add_container(request.container, request.cgroup, request.root)
        audit.info("container_added", sandbox=record.policy.sandbox, container=request.container,
                   root=request.root, generation=record.generation, client=_peer(context))
        return applied_to_proto(record, whole_policy=False)

    def RemoveContainer(self, request: pb.RemoveContainerRequest, context: grpc.ServicerContext) -> pb.AppliedPolicy:
        if not request.container:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "container: is required")
        with self._apply_refusals(context):
            record = self._enforcement.remove_container(request.container)
        audit.info("container_removed", sandbox=record.policy.sandbox, container=request.container,
                   generation=record.generation, client=_peer(context))
        return applied_to_proto(record, whole_policy=False)

    def RemovePolicy(self, request: pb.RemovePolicyRequest, context: grpc.ServicerContext) -> pb.RemovePolicyResponse:
        self._require_sandbox(request.sandbox, context)
        try:
            record = self._enforcement.remove(request.sandbox)
        except SandboxNotFound as exc:
            self._abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
            raise
        audit.info("policy_removed", sandbox=request.sandbox, generation=record.generation,
                   policy_sha256=record.policy_sha256, client=_peer(context))
        return pb.RemovePolicyResponse()

    def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.ServicerContext) -> pb.AppliedPolicy:
        self._require_sandbox(request.sandbox, context)
        try:
            return applied_to_proto(self._enforcement.store.get(request.sandbox))
        except SandboxNotFound as exc:
            self._abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
            raise  # unreachable: abort raises

    def UpdateLabels(self, request: pb.UpdateLabelsRequest, context: grpc.ServicerContext) -> pb.AppliedPolicy:
        self._require_sandbox(request.sandbox, context)
        try:
            record = self._enforcement.update_labels(request.sandbox, dict(request.labels), replace=request.replace)
            audit.info("labels_updated", sandbox=request.sandbox, labels=record.policy.label_map,
                       policy_sha256=record.policy_sha256, client=_peer(context))
            return applied_to_proto(record)
        except PolicyError as exc:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except SandboxNotFound as exc:
            self._abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        raise AssertionError("unreachable: abort raises")

    def Release(self, request: pb.ReleaseRequest, context: grpc.ServicerContext) -> pb.AppliedPolicy:
        self._require_sandbox(request.sandbox, context)
        try:
            record = self._enforcement.release(request.sandbox)
            audit.info("sandbox_released", sandbox=request.sandbox, client=_peer(context))
            return applied_to_proto(record)
        except SandboxNotFound as exc:
            self._abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        raise AssertionError("unreachable: abort raises")

    def ListPolicies(self, request: pb.ListPoliciesRequest, context: grpc.ServicerContext) -> pb.ListPoliciesResponse:
        return pb.ListPoliciesResponse(policies=[applied_to_proto(r) for r in self._enforcement.store.all()])

    def GetStats(self, request: pb.GetStatsRequest, context: grpc.ServicerContext) -> pb.SandboxStats:
        self._require_sandbox(request.sandbox, context)
        try:
            totals, since_ns = self._enforcement.counters(request.sandbox, reset=request.reset)
        except SandboxNotFound as exc:
            self._abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
            raise

        def kind(index: int) -> pb.KindCounters:
            return pb.KindCounters(refused=totals.refused[index], audited=totals.audited[index])

        return pb.SandboxStats(
            sandbox=request.sandbox,
            **{name: kind(layout.kind_number(BY_NAME[name].kernel_macro)) for name in COUNTED},
            events_suppressed=totals.suppressed,
            events_lost=totals.lost,
            since_unix_ns=since_ns,
        )

    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.DaemonStatus:
        kernel = self._enforcement.kernel_status()
        return pb.DaemonStatus(
            programs=[pb.ProgramStatus(name=name, hook=hook, attached=attached, expected=expected)
                      for name, hook, attached, expected in kernel.programs],
            events_lost=kernel.events_lost,
            events_unattributed=kernel.events_unattributed,
            processes_untracked=kernel.processes_untracked,
            build=kernel.build,
            map_layout=kernel.map_layout,
            pin_dir=kernel.pin_dir,
            state_dir=kernel.state_dir,
            taken_over=kernel.taken_over,
            dns_forwarders=kernel.dns_forwarders,
            syscalls=[pb.SyscallEnforcement(name=name, refused_by=how) for name, how in kernel.syscalls],
            next_seq=self._pipeline.next_seq,
            exec_enforcement=self._enforcement.exec_mode,
            gpu_majors=sorted(self._enforcement.gpu_majors),
            sandboxes=len(self._enforcement.store.all()),
            kernel_release=os.uname().release,
            audit_log=str(self._audit_log.path) if self._audit_log else "",
            audit_records=self._audit_log.records if self._audit_log else 0,
            audit_write_failures=self._audit_log.failures if self._audit_log else 0,
        )

    def StreamDenials(self, request: pb.StreamDenialsRequest, context: grpc.ServicerContext) -> Iterator[pb.DenialBatch]:
        sandboxes = set(request.sandboxes)
        labels = dict(request.labels)
        cursor = request.since or self._pipeline.first_retained_seq
        end = None if request.follow else self._pipeline.next_seq  # what is retained now
        while context.is_active() and not self._pipeline.stopping:
            if end is not None and cursor >= end:
                return
            events, next_cursor, missed = self._pipeline.read(cursor, timeout=0.5 if request.follow else 0)
            batch = pb.DenialBatch(next_seq=next_cursor)
            if missed:
                log.warning("subscriber_fell_behind", missed=missed, peer=_peer(context))
                batch.gap.first_seq = cursor
                batch.gap.last_seq = cursor + missed - 1
                batch.gap.missed = missed
            batch.denials.extend(e for e in events if matches(e, sandboxes, labels))
            if batch.denials or missed:
                yield batch
            cursor = next_cursor
