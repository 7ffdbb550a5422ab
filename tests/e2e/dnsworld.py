"""A small "internet" for DNS tests: an authoritative test DNS server and test
hosts, reachable from an agent namespace over a veth pair and from nowhere else.

    agent netns  10.232.0.2/24, fd00:232::2/64  --veth--  10.232.0.1, fd00:232::1  inet netns
                 routes to 10.233.0.0/24 and fd00:233::/64 via the veth     hosts on its loopback

Neither namespace has a default route, nor any other interface: nothing sent
there can leave the machine. The DNS server also listens on the host's
loopback (127.0.0.153) for sandboxes that share the host's namespace.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

AGENT4, INET4 = "10.232.0.2", "10.232.0.1"
AGENT6, INET6 = "fd00:232::2", "fd00:232::1"
HOSTS4, HOSTS6 = "10.233.0.0/24", "fd00:233::/64"
DNS4, DNS6 = "10.233.0.53", "fd00:233::53"
LOCAL_DNS = "127.0.0.153"  # the test server on the host's loopback


@dataclass
class Zone:
    """name -> records: (type, value, ttl); a CNAME's value is the target name."""

    records: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    asked: Counter[str] = field(default_factory=Counter)  # names the server was asked about
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, name: str, *records: tuple[str, str, int]) -> None:
        with self.lock:
            self.records[name.lower()] = list(records)

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name
        with self.lock:
            self.asked[name.to_text(omit_final_dot=True).lower()] += 1
            for _ in range(8):
                records = self.records.get(name.to_text(omit_final_dot=True).lower())
                if records is None:
                    if not response.answer:
                        response.set_rcode(dns.rcode.NXDOMAIN)
                    break
                cname = [r for r in records if r[0] == "CNAME"]
                if cname:
                    rtype, value, ttl = cname[0]
                    response.answer.append(dns.rrset.from_text(name, ttl, "IN", "CNAME", value + "."))
                    name = dns.name.from_text(value)
                    continue
                for rtype, value, ttl in records:
                    if dns.rdatatype.from_text(rtype) == question.rdtype:
                        response.answer.append(dns.rrset.from_text(name, ttl, "IN", rtype, value))
                break
        return response.to_wire()


class TestDnsServer:
    """Serves ``zone`` over UDP and TCP on the given (already bound) sockets."""

    def __init__(self, zone: Zone, udp: list[socket.socket], tcp: list[socket.socket]) -> None:
        self.zone = zone
        self._sockets = udp + tcp
        for sock in udp:
            threading.Thread(target=self._serve_udp, args=(sock,), daemon=True).start()
        for sock in tcp:
            threading.Thread(target=self._serve_tcp, args=(sock,), daemon=True).start()

    def _serve_udp(self, sock: socket.socket) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(65535)
            except OSError:
                return
            with contextlib.suppress(Exception):
                sock.sendto(self.zone.answer(data), peer)

    def _serve_tcp(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_conn, args=(conn,), daemon=True).start()

    def _serve_conn(self, conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    head = conn.recv(2)
                    if len(head) < 2:
                        return
                    (size,) = struct.unpack("!H", head)
                    data = b""
                    while len(data) < size:
                        chunk = conn.recv(size - len(data))
                        if not chunk:
                            return
                        data += chunk
                    reply = self.zone.answer(data)
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                return

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def bound_sockets(addresses: list[str], port: int = 53) -> tuple[list[socket.socket], list[socket.socket]]:
    udp, tcp = [], []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        u = socket.socket(family, socket.SOCK_DGRAM)
        u.bind((address, port))
        t = socket.socket(family, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((address, port))
        t.listen(16)
        udp.append(u)
        tcp.append(t)
    return udp, tcp


class TestHost:
    """A TCP listener that answers each connection with its own address."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(self.sock.getsockname()[0].encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def listen_tcp(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(64)
    return sock
