"""Python client for the Enforcer daemon (gRPC only).

    from enforcer.client import Enforcer
    with Enforcer() as enf:
        enf.apply("policy.yaml")
        for denial in enf.denial_events(sandboxes=["rollout-17"], follow=True):
            ...
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from enforcer import wire
from enforcer.policy import Policy, load_policy_file, parse_policy
from enforcer.settings import MAX_MESSAGE_BYTES, grpc_target, socket_path
from enforcer.v1 import enforcer_pb2 as pb
from enforcer.v1 import enforcer_pb2_grpc as pb_grpc

PolicyLike = Policy | pb.Policy | Mapping[str, Any] | str | Path


# Reconnect quickly: a trainer waiting for a (re)starting daemon should not sit
# out gRPC's default 1 s -> 120 s backoff once the socket is back.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),  # a local daemon restarting is seen within 0.25 s
    # Not grpc.min_reconnect_backoff_ms: gRPC core takes it as the time limit of
    # each connection attempt (100 ms at least), so on a loaded host a call
    # failed UNAVAILABLE, "timed out before receiving SETTINGS frame" (seen
    # in bench/soak.py); the default limit is 20 s.
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class EnforcerError(Exception):
    """The daemon refused a request, or could not be reached."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def to_wire_policy(policy: PolicyLike) -> pb.Policy:
    """Validate locally (same rules as the daemon) and convert."""
    if isinstance(policy, pb.Policy):
        return policy
    if isinstance(policy, Policy):
        return wire.policy_to_proto(policy)
    if isinstance(policy, (str, Path)):
        return wire.policy_to_proto(load_policy_file(policy))
    return wire.policy_to_proto(parse_policy(policy))


def labels_request(sandbox: str, labels: Mapping[str, str] | None, replace: bool,
                   more: Mapping[str, str]) -> pb.UpdateLabelsRequest:
    return pb.UpdateLabelsRequest(sandbox=sandbox, labels={**(labels or {}), **more}, replace=replace)


def stream_request(sandboxes: builtins.list[str] | tuple[str, ...], labels: Mapping[str, str] | None, follow: bool,
                   since: int) -> pb.StreamDenialsRequest:
    return pb.StreamDenialsRequest(sandboxes=list(sandboxes), labels=dict(labels or {}), follow=follow, since=since)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a daemon's TCP listener: the CA that signed its
    certificate, and this client's certificate and key when it requires them."""

    ca: str
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_env(cls) -> TlsFiles | None:
        ca = os.environ.get("ENFORCER_TLS_CA")
        return cls(ca, os.environ.get("ENFORCER_TLS_CERT"), os.environ.get("ENFORCER_TLS_KEY")) if ca else None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


def open_channel(channels: Any, address: str, tls: TlsFiles | None) -> Any:
    """A channel from ``channels`` (grpc or grpc.aio): TLS with ``tls`` or the
    ENFORCER_TLS_* environment, else plaintext (the Unix socket)."""
    tls = tls or TlsFiles.from_env()
    if tls:
        return channels.secure_channel(address, tls.credentials(), options=CHANNEL_OPTIONS)
    return channels.insecure_channel(address, options=CHANNEL_OPTIONS)


def not_ready(address: str, timeout: float) -> EnforcerError:
    return EnforcerError(grpc.StatusCode.UNAVAILABLE, f"daemon at {address} not ready after {timeout}s")


class Enforcer:
    """``address``: a Unix socket path (default), or host:port of a daemon's
    TLS listener, with ``tls`` (or ENFORCER_TLS_CA/_CERT/_KEY). Every call has
    a deadline of ``timeout`` seconds (streams that follow have none)."""

    def __init__(self, address: str | None = None, timeout: float = 10.0, tls: TlsFiles | None = None) -> None:
        self.address = grpc_target(socket_path(address))
        self.timeout = timeout
        self._channel = open_channel(grpc, self.address, tls)
        self._stub = pb_grpc.EnforcerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> Enforcer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise EnforcerError(exc.code(), exc.details() or "") from None

    def apply(self, policy: PolicyLike) -> pb.ApplyPolicyResponse:
        return self._call(self._stub.ApplyPolicy, pb.ApplyPolicyRequest(policy=to_wire_policy(policy)))

    def remove(self, sandbox: str) -> None:
        self._call(self._stub.RemovePolicy, pb.RemovePolicyRequest(sandbox=sandbox))

    def add_container(self, container: str, cgroup: str, root: str) -> pb.AppliedPolicy:
        """A container started inside a sandbox's cgroup: its exec entries are
        resolved in ``root`` too (what ``enforcer oci-hook`` does at createRuntime)."""
        return self._call(self._stub.AddContainer,
                          pb.AddContainerRequest(container=container, cgroup=cgroup, root=root))

    def remove_container(self, container: str) -> pb.AppliedPolicy:
        return self._call(self._stub.RemoveContainer, pb.RemoveContainerRequest(container=container))

    def get(self, sandbox: str) -> pb.AppliedPolicy:
        return self._call(self._stub.GetPolicy, pb.GetPolicyRequest(sandbox=sandbox))

    def list(self) -> list[pb.AppliedPolicy]:
        return list(self._call(self._stub.ListPolicies, pb.ListPoliciesRequest()).policies)

    def stats(self, sandbox: str, reset: bool = False) -> pb.SandboxStats:
        """Exact counts since the apply or the last reset; ``reset=True`` starts a
        new count after this one (an episode boundary)."""
        return self._call(self._stub.GetStats, pb.GetStatsRequest(sandbox=sandbox, reset=reset))

    def set_labels(self, sandbox: str, labels: Mapping[str, str] | None = None, *, replace: bool = False,
                   **more: str) -> pb.AppliedPolicy:
        """Labels for the sandbox's next denials (merged into the current ones
        unless ``replace``); the rules are not re-applied."""
        return self._call(self._stub.UpdateLabels, labels_request(sandbox, labels, replace, more))

    def release(self, sandbox: str) -> pb.AppliedPolicy:
        """End an escalation's quarantine or freeze and re-arm its threshold."""
        return self._call(self._stub.Release, pb.ReleaseRequest(sandbox=sandbox))

    def status(self) -> pb.DaemonStatus:
        return self._call(self._stub.GetStatus, pb.GetStatusRequest())

    def denials(
        self,
        sandboxes: builtins.list[str] | tuple[str, ...] = (),
        labels: Mapping[str, str] | None = None,
        follow: bool = False,
        since: int = 0,
    ) -> Iterator[pb.DenialBatch]:
        """Batches of denials in sequence order: the retained ones from ``since``
        (0: the oldest retained), then (with follow) new ones as they happen.
        Resume after a reconnect with ``since=batch.next_seq`` of the last batch
        handled: nothing is repeated or skipped while it is retained, and a
        ``batch.gap`` says how many fell out of retention. Closing the iterator
        (or leaving a for loop) cancels the stream."""
        request = stream_request(sandboxes, labels, follow, since)
        stream = self._stub.StreamDenials(request, timeout=None if follow else self.timeout)
        try:
            yield from stream
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise EnforcerError(exc.code(), exc.details() or "") from None
        finally:
            stream.cancel()

    def denial_events(
        self,
        sandboxes: builtins.list[str] | tuple[str, ...] = (),
        labels: Mapping[str, str] | None = None,
        follow: bool = False,
        since: int = 0,
    ) -> Iterator[pb.DenialEvent]:
        """The denials of :meth:`denials`, one by one (gaps are only in the batches)."""
        for batch in self.denials(sandboxes, labels, follow, since):
            yield from batch.denials

    def health(self) -> str:
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=""))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health() == "SERVING":
                    return
            except EnforcerError:
                pass
            if time.monotonic() > deadline:
                raise not_ready(self.address, timeout)
            time.sleep(0.05)
