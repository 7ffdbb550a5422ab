"""asyncio client for the Enforcer daemon: the surface of :mod:`enforcer.client`,
with coroutines and async iterators.

    from enforcer.aio import Enforcer
    async with Enforcer() as enf:
        await enf.apply("policy.yaml")
        async for batch in enf.denials(sandboxes=["rollout-17"], follow=True):
            ...
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from enforcer.client import (
    EnforcerError,
    PolicyLike,
    TlsFiles,
    labels_request,
    not_ready,
    open_channel,
    stream_request,
    to_wire_policy,
)
from enforcer.settings import grpc_target, socket_path
from enforcer.v1 import enforcer_pb2 as pb
from enforcer.v1 import enforcer_pb2_grpc as pb_grpc

__all__ = ["Enforcer", "EnforcerError"]


class Enforcer:
    def __init__(self, address: str | None = None, timeout: float = 10.0, tls: TlsFiles | None = None) -> None:
        self.address = grpc_target(socket_path(address))
        self.timeout = timeout
        self._channel = open_channel(grpc.aio, self.address, tls)
        self._stub = pb_grpc.EnforcerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def __aenter__(self) -> Enforcer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise EnforcerError(exc.code(), exc.details() or "") from None

    async def apply(self, policy: PolicyLike) -> pb.ApplyPolicyResponse:
        return await self._call(self._stub.ApplyPolicy, pb.ApplyPolicyRequest(policy=to_wire_policy(policy)))

    async def remove(self, sandbox: str) -> None:
        await self._call(self._stub.RemovePolicy, pb.RemovePolicyRequest(sandbox=sandbox))

    async def add_container(self, container: str, cgroup: str, root: str) -> pb.AppliedPolicy:
        return await self._call(self._stub.AddContainer,
                                pb.AddContainerRequest(container=container, cgroup=cgroup, root=root))

    async def remove_container(self, container: str) -> pb.AppliedPolicy:
        return await self._call(self._stub.RemoveContainer,
                                pb.RemoveContainerRequest(container=container))

    async def get(self, sandbox: str) -> pb.AppliedPolicy:
        return await self._call(self._stub.GetPolicy, pb.GetPolicyRequest(sandbox=sandbox))

    async def list(self) -> builtins.list[pb.AppliedPolicy]:
        return list((await self._call(self._stub.ListPolicies, pb.ListPoliciesRequest())).policies)

    async def stats(self, sandbox: str, reset: bool = False) -> pb.SandboxStats:
        return await self._call(self._stub.GetStats, pb.GetStatsRequest(sandbox=sandbox, reset=reset))

    async def set_labels(self, sandbox: str, labels: Mapping[str, str] | None = None, *, replace: bool = False,
                         **more: str) -> pb.AppliedPolicy:
        return await self._call(self._stub.UpdateLabels, labels_request(sandbox, labels, replace, more))

    async def release(self, sandbox: str) -> pb.AppliedPolicy:
        return await self._call(self._stub.Release, pb.ReleaseRequest(sandbox=sandbox))

    async def status(self) -> pb.DaemonStatus:
        return await self._call(self._stub.GetStatus, pb.GetStatusRequest())

    async def denials(
        self,
        sandboxes: builtins.list[str] | tuple[str, ...] = (),
        labels: Mapping[str, str] | None = None,
        follow: bool = False,
        since: int = 0,
    ) -> AsyncIterator[pb.DenialBatch]:
        """As :meth:`enforcer.client.Enforcer.denials`."""
        call = self._stub.StreamDenials(stream_request(sandboxes, labels, follow, since),
                                        timeout=None if follow else self.timeout)
        try:
            async for batch in call:
                yield batch
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise EnforcerError(exc.code(), exc.details() or "") from None
        finally:
            call.cancel()

    async def denial_events(
        self,
        sandboxes: builtins.list[str] | tuple[str, ...] = (),
        labels: Mapping[str, str] | None = None,
        follow: bool = False,
        since: int = 0,
    ) -> AsyncIterator[pb.DenialEvent]:
        async for batch in self.denials(sandboxes, labels, follow, since):
            for event in batch.denials:
                yield event

    async def health(self) -> str:
        response = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=""))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if await self.health() == "SERVING":
                    return
            except EnforcerError:
                pass
            if time.monotonic() > deadline:
                raise not_ready(self.address, timeout)
            await asyncio.sleep(0.05)
