"""The resolvers a forwarder asks: the host's (/etc/resolv.conf) unless the
policy names its own, and a query asked of them over TCP."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from pathlib import Path

import structlog

from enforcer.policy import Upstream

log = structlog.get_logger("enforcer.dns")

UPSTREAM_TIMEOUT_S = 2.0   # then the next upstream, then SERVFAIL
RESOLV_CONF = Path("/etc/resolv.conf")


def host_resolvers(path: Path = RESOLV_CONF) -> tuple[Upstream, ...]:
    found = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return ()
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            with contextlib.suppress(ValueError):
                found.append(Upstream(ipaddress.ip_address(fields[1].split("%")[0])))
    return tuple(found)


def read_framed(conn: socket.socket) -> bytes | None:
    head = read_exactly(conn, 2)
    if head is None:
        return None
    return read_exactly(conn, int.from_bytes(head, "big"))


def read_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def ask_tcp(upstreams: tuple[Upstream, ...], query: bytes) -> bytes | None:
    for upstream in upstreams:
        try:
            with socket.create_connection((str(upstream.address), upstream.port), timeout=UPSTREAM_TIMEOUT_S) as s:
                s.sendall(len(query).to_bytes(2, "big") + query)
                response = read_framed(s)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, None):
                log.warning("dns_upstream_tcp_failed", upstream=str(upstream), error=str(exc))
            continue
        if response is not None and response[:2] == query[:2]:
            return response
    return None
