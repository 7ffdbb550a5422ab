"""A sandbox's forwarder sockets in one network namespace: UDP and TCP on its
loopback (127.0.0.1, and ::1 where the namespace has IPv6), and the UDP
sockets that ask the upstream resolvers."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from enforcer import netns
from enforcer.kernel import layout
from enforcer.policy import Upstream


class ForwarderError(RuntimeError):
    """A sandbox's DNS cannot be served (no loopback in its namespace, no upstream)."""


@dataclass
class Listener:
    """A sandbox's forwarder sockets in one network namespace."""

    namespace: netns.NetworkNamespace | None  # None: the daemon's own
    cookie: int
    udp4: socket.socket
    tcp4: socket.socket
    udp6: socket.socket | None
    tcp6: socket.socket | None
    upstream: dict[int, socket.socket]  # family -> UDP socket toward the upstream resolvers
    upstream_namespace: netns.NetworkNamespace | None
    tcp_connections: int = 0

    def ports(self) -> layout.Forwarder:
        def port(sock: socket.socket | None) -> int:
            return sock.getsockname()[1] if sock is not None else 0
        return layout.Forwarder(udp4=port(self.udp4), tcp4=port(self.tcp4), udp6=port(self.udp6),
                                tcp6=port(self.tcp6))

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.udp4, self.tcp4, self.udp6, self.tcp6, *self.upstream.values()) if s is not None]

    def close(self) -> None:
        for sock in self.sockets():
            sock.close()
        if self.namespace is not None:
            self.namespace.close()


def open_listener(namespace: netns.NetworkNamespace | None) -> Listener:
    """Runs inside the namespace (netns.run_in): the sockets are made there."""
    opened: list[socket.socket] = []

    def bound(family: int, kind: int, required: bool) -> socket.socket | None:
        sock = socket.socket(family, kind)
        opened.append(sock)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        except OSError as exc:
            if required:
                raise ForwarderError(f"cannot listen on 127.0.0.1 in the sandbox's network namespace "
                                     f"({exc.strerror}): is its loopback up?") from exc
            opened.remove(sock)
            sock.close()
            return None
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        sock.setblocking(False)
        return sock

    try:
        udp4 = bound(socket.AF_INET, socket.SOCK_DGRAM, True)
        tcp4 = bound(socket.AF_INET, socket.SOCK_STREAM, True)
        udp6 = bound(socket.AF_INET6, socket.SOCK_DGRAM, False)
        tcp6 = bound(socket.AF_INET6, socket.SOCK_STREAM, False) if udp6 else None
        assert udp4 is not None and tcp4 is not None
        cookie = netns.netns_cookie(udp4)
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return Listener(namespace, cookie, udp4, tcp4, udp6, tcp6, {}, None)


def upstream_sockets(upstreams: tuple[Upstream, ...]) -> dict[int, socket.socket]:
    """A non-blocking UDP socket per address family the upstreams use."""
    sockets: dict[int, socket.socket] = {}
    for family in {socket.AF_INET if u.address.version == 4 else socket.AF_INET6 for u in upstreams}:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sockets[family] = sock
    return sockets
