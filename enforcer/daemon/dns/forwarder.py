"""The DNS forwarder: what a sandbox that allows hosts by name resolves through.

The kernel redirects every port-53 connect and datagram of such a sandbox to
this forwarder's sockets in the sandbox's own network namespace (127.0.0.1 and
::1 there, one set per sandbox and namespace, so the socket a query arrives on
says whose it is). For each query:

- a name the policy does not allow is answered REFUSED and reported as a
  denial of kind dns (in audit mode it is forwarded and reported as audited);
- A and AAAA queries for an allowed name go to the upstream resolver; the
  addresses of the answer (following its CNAME chain from the asked name) are
  written into the kernel's name_addrs map for the sandbox's generation, with
  the matching rules' ports and an expiry of TTL + grace, before the answer is
  passed on, so the connect that follows is allowed;
- any other query type for an allowed name is answered with no records
  (NOERROR, NODATA): HTTPS/SVCB address hints or anything else would name
  addresses that were not installed, and nothing but A/AAAA is needed to connect.

One thread serves every UDP socket (queries in, upstream answers back,
timeouts, expiry) without waiting on the upstream; each TCP connection gets a
thread of its own (DNS over TCP is rare: truncated answers, some resolvers).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from enforcer import netns
from enforcer.daemon.dns.budget import EventBudget
from enforcer.daemon.dns.learned import LearnedAddresses, NameView
from enforcer.daemon.dns.listeners import ForwarderError, Listener, open_listener, upstream_sockets
from enforcer.daemon.dns.upstreams import UPSTREAM_TIMEOUT_S, ask_tcp, host_resolvers, read_framed
from enforcer.daemon.dns.wire import (
    OPCODE_MASK,
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    TYPE_A,
    TYPE_AAAA,
    Question,
    answer_addresses,
    parse_question,
    reply_with,
    type_name,
)
from enforcer.kernel import layout
from enforcer.kernel.encode import IPPROTO_TCP, IPPROTO_UDP
from enforcer.kernel.events import DNS_DENIED, DNS_NOT_ALLOWED, DnsDetail
from enforcer.kernel.guard import SandboxGuard
from enforcer.policy import Mode, Policy, Upstream

log = structlog.get_logger("enforcer.dns")

TCP_IDLE_TIMEOUT_S = 10.0
MAX_TCP_CONNECTIONS = 64   # per sandbox and namespace
SWEEP_S = 1.0
RETRY_NAMESPACE_S = 1.0  # a namespace whose forwarder could not be made is tried again after this

# sandbox, slot, detail, layout.ACTION_* -> False if it could not be taken (counted lost)
Reporter = Callable[[str, int, DnsDetail, int], bool]


def _boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)  # the clock the kernel's expiries are in


@dataclass
class SandboxResolver:
    sandbox: str
    slot: int
    views: list[NameView]        # [current] or, while a replace is under way, [current, next]
    upstreams: tuple[Upstream, ...]
    upstream_given: bool         # from the policy (reached from the sandbox's namespace) or the host's
    grace_ns: int
    learned: LearnedAddresses
    budget: EventBudget
    listeners: dict[int, Listener] = field(default_factory=dict)  # namespace inode -> sockets
    counters: layout.DnsCounters = field(default_factory=layout.DnsCounters)

    @property
    def current(self) -> NameView:
        return self.views[0]


@dataclass
class Pending:
    resolver: SandboxResolver
    listener: Listener
    client: tuple[object, ...]
    question: Question
    query: bytes
    upstream_index: int
    deadline: float


@dataclass
class DnsChange:
    """An apply's DNS half, between prepare and commit/rollback."""

    sandbox: str
    generation: int
    created: bool


class DnsForwarder:
    def __init__(self, guard: SandboxGuard, events_per_sec: int = 2000) -> None:
        self._guard = guard
        self._events_per_sec = events_per_sec
        self._lock = threading.RLock()
        self._resolvers: dict[str, SandboxResolver] = {}
        self._selector = selectors.DefaultSelector()
        self._pending: dict[tuple[int, int], Pending] = {}  # (upstream fd, query id) -> query
        self._next_id = 1
        self._report: Reporter | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._failed_namespaces: dict[tuple[str, int], float] = {}
        self._thread = threading.Thread(target=self._serve, name="dns-forwarder", daemon=True)
        self._thread.start()

    def report_to(self, report: Reporter) -> None:
        self._report = report

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            for sandbox in list(self._resolvers):
                self._close_resolver(self._resolvers.pop(sandbox), forget_kernel=False)
        self._wake_w.send(b"x")
        self._thread.join(timeout=5)

    @property
    def forwarders(self) -> int:
        with self._lock:
            return sum(len(r.listeners) for r in self._resolvers.values())

    # ---- apply / remove (called under the enforcement lock) ------------------

    def prepare(self, policy: Policy, slot: int, generation: int, cgroup_path: Path) -> DnsChange:
        """Make the sandbox's forwarder ready for ``generation`` before the kernel
        switches to it: listeners in each of its namespaces (new ones for a new
        sandbox), and the addresses its current generation learned re-judged
        under the new policy and written for the new one. Raises ForwarderError
        with nothing changed."""
        network = policy.network
        assert network.dns is not None
        view = NameView(generation, network, policy.mode is Mode.AUDIT)
        with self._lock:
            resolver = self._resolvers.get(policy.sandbox)
            created = resolver is None
            if resolver is None:
                upstreams = network.dns.upstream or host_resolvers()
                if not upstreams:
                    raise ForwarderError("the policy gives no dns.upstream and /etc/resolv.conf lists no nameserver")
                resolver = SandboxResolver(policy.sandbox, slot, [view], upstreams, bool(network.dns.upstream),
                                           round(network.dns.grace * 1e9), LearnedAddresses(self._guard.maps),
                                           EventBudget(self._events_per_sec))
                resolver.counters = self._guard.maps.read_dns_counters(slot)
            change = DnsChange(policy.sandbox, generation, created)
            try:
                self._listen(resolver, cgroup_path)
                if not created:
                    resolver.views = [resolver.current, view]
                    resolver.learned.carry_forward(resolver.current.generation, view, _boottime_ns())
            except BaseException:
                if created:
                    self._close_resolver(resolver, forget_kernel=True)
                else:
                    resolver.views = [resolver.current]
                raise
            if created:
                self._resolvers[policy.sandbox] = resolver
            return change

    def commit(self, change: DnsChange, policy: Policy) -> None:
        """The kernel now judges by ``change.generation``: answer by it alone and
        forget what earlier generations learned."""
        network = policy.network
        assert network.dns is not None
        with self._lock:
            resolver = self._resolvers[change.sandbox]
            view = next(v for v in resolver.views if v.generation == change.generation)
            resolver.views = [view]
            upstreams = network.dns.upstream or host_resolvers() or resolver.upstreams
            given = bool(network.dns.upstream)
            resolver.grace_ns = round(network.dns.grace * 1e9)
            if (upstreams, given) != (resolver.upstreams, resolver.upstream_given):
                resolver.upstreams, resolver.upstream_given = upstreams, given
                for listener in resolver.listeners.values():
                    self._open_upstream(resolver, listener)
            resolver.learned.keep_only(change.generation)

    def rollback(self, change: DnsChange) -> None:
        with self._lock:
            resolver = self._resolvers.get(change.sandbox)
            if resolver is None:
                return
            if change.created:
                self._close_resolver(self._resolvers.pop(change.sandbox), forget_kernel=True)
                return
            resolver.views = [v for v in resolver.views if v.generation != change.generation]
            resolver.learned.forget(change.generation)

    def remove(self, sandbox: str) -> None:
        with self._lock:
            resolver = self._resolvers.pop(sandbox, None)
            if resolver is not None:
                self._close_resolver(resolver, forget_kernel=True)

    def adopt(self, policy: Policy, slot: int, generation: int, cgroup_path: Path,
              learned: list[tuple[bytes, bytes]]) -> None:
        """A sandbox an earlier daemon served: new listeners (its sockets died
        with it), and the addresses it learned for this generation kept until
        they expire (their names are not kept: a later replace drops them)."""
        change = self.prepare(policy, slot, generation, cgroup_path)
        with self._lock:
            self._resolvers[change.sandbox].learned.adopt(generation, learned)

    def forget_stale_forwarders(self) -> None:
        """Forwarder entries no sandbox of this daemon serves (left by an earlier one)."""
        with self._lock:
            live = {(r.slot, lst.cookie) for r in self._resolvers.values() for lst in r.listeners.values()}
            for slot, cookie in self._guard.maps.forwarder_keys():
                if (slot, cookie) not in live:
                    self._guard.maps.clear_forwarder(slot, cookie)

    def serve_namespace_of(self, sandbox: str, pid: int) -> bool:
        """A process of the sandbox sent a query from a namespace with no
        forwarder (it entered it after the apply): listen there too, so its
        next query is served. True if a forwarder was added."""
        with self._lock:
            resolver = self._resolvers.get(sandbox)
            if resolver is None or self._stopping:
                return False
            found = netns.namespaces_of([pid])
            if not found or set(found) <= set(resolver.listeners):
                return False
            inode = next(iter(found))
            now = time.monotonic()
            if now - self._failed_namespaces.get((sandbox, inode), -RETRY_NAMESPACE_S) < RETRY_NAMESPACE_S:
                return False  # a flood of refusals from a namespace that cannot be served: try once a second
            try:
                self._listen_in(resolver, found)
            except Exception:
                self._failed_namespaces[(sandbox, inode)] = now
                raise
        log.info("dns_forwarder_added", sandbox=sandbox, pid=pid, namespace=next(iter(found)))
        return True

    def _listen(self, resolver: SandboxResolver, cgroup_path: Path) -> None:
        """Sockets in every namespace the sandbox's processes are in (the
        daemon's when it has none yet)."""
        found = netns.namespaces_of(netns.cgroup_pids(cgroup_path))
        self._listen_in(resolver, found or {netns.own_inode(): -1})

    def _listen_in(self, resolver: SandboxResolver, found: dict[int, int]) -> None:
        for inode, pid in found.items():
            if inode in resolver.listeners:
                continue
            namespace = None if inode == netns.own_inode() else netns.open_namespace(pid)
            try:
                listener = netns.run_in(namespace, lambda ns=namespace: open_listener(ns))  # type: ignore[misc]
            except BaseException:
                if namespace is not None:
                    namespace.close()
                raise
            try:
                self._open_upstream(resolver, listener)
                self._guard.maps.set_forwarder(resolver.slot, listener.cookie, listener.ports())
            except BaseException:
                self._drop_listener(listener)
                raise
            resolver.listeners[inode] = listener
            for sock in (listener.udp4, listener.udp6):
                if sock is not None:
                    self._selector.register(sock, selectors.EVENT_READ,
                                            functools.partial(self._drain, self._query, resolver, listener))
            for sock in (listener.tcp4, listener.tcp6):
                if sock is not None:
                    self._selector.register(sock, selectors.EVENT_READ,
                                            functools.partial(self._accept, resolver, listener))
        self._wake_w.send(b"x")

    def _open_upstream(self, resolver: SandboxResolver, listener: Listener) -> None:
        """The sockets that ask the upstreams, in place of any earlier ones. A
        resolver the policy names is reached as the sandbox would reach it (from
        its namespace); the host's resolvers from the daemon's own."""
        namespace = listener.namespace if resolver.upstream_given else None
        sockets = netns.run_in(namespace, lambda: upstream_sockets(resolver.upstreams))
        for sock in listener.upstream.values():
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            self._pending = {k: p for k, p in self._pending.items() if k[0] != sock.fileno()}
            sock.close()
        listener.upstream, listener.upstream_namespace = sockets, namespace
        for sock in sockets.values():
            self._selector.register(sock, selectors.EVENT_READ,
                                    functools.partial(self._drain, self._answer, resolver, listener))

    def _drop_listener(self, listener: Listener) -> None:
        for sock in listener.sockets():
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
        listener.close()

    def _close_resolver(self, resolver: SandboxResolver, forget_kernel: bool) -> None:
        for listener in resolver.listeners.values():
            if forget_kernel:
                self._guard.maps.clear_forwarder(resolver.slot, listener.cookie)
            self._drop_listener(listener)
        resolver.listeners.clear()
        self._pending = {k: p for k, p in self._pending.items() if p.resolver is not resolver}
        if forget_kernel:
            resolver.learned.forget_all()

    def _sweep(self) -> None:
        now = _boottime_ns()
        with self._lock:
            for resolver in self._resolvers.values():
                resolver.learned.sweep(now)

    # ---- denials ----------------------------------------------------------------

    def _refused(self, resolver: SandboxResolver, question: Question, reason: int, transport: int) -> None:
        """Count exactly, report within the event budget. Under the lock."""
        audit = resolver.current.audit
        counters = resolver.counters
        if audit:
            counters.audited += 1
        else:
            counters.refused += 1
        report = resolver.budget.take(time.monotonic_ns())
        if not report:
            counters.suppressed += 1
        else:
            detail = DnsDetail(question.name, type_name(question.qtype), reason, transport)
            action = layout.ACTION_AUDITED if audit else layout.ACTION_REFUSED
            if self._report is None or not self._report(resolver.sandbox, resolver.slot, detail, action):
                counters.lost += 1
        self._guard.maps.write_dns_counters(resolver.slot, counters)

    # ---- the decision, shared by UDP and TCP -------------------------------------

    def _decide(self, resolver: SandboxResolver, data: bytes,
                transport: int) -> tuple[bytes | None, Question | None]:
        """(an immediate answer, or None and the question to forward)."""
        question = parse_question(data)
        if question is None:
            return reply_with(data, None, RCODE_FORMERR), None
        if question.flags & OPCODE_MASK:
            return reply_with(data, question, RCODE_NOTIMP), None
        view = resolver.current
        if view.network.name_allowed(question.name) is None:
            denied = any(rule.matches(question.name) for rule in view.network.deny_names)
            self._refused(resolver, question, DNS_DENIED if denied else DNS_NOT_ALLOWED, transport)
            if not view.audit:
                return reply_with(data, question, RCODE_REFUSED), None
            return None, question
        if question.qtype not in (TYPE_A, TYPE_AAAA) and not view.audit:
            return reply_with(data, question, 0), None  # NODATA: see the module's docstring
        return None, question

    def _answered(self, resolver: SandboxResolver, question: Question, response: bytes) -> bytes:
        """The upstream's answer, once its addresses are allowed. Under the lock."""
        if question.qtype in (TYPE_A, TYPE_AAAA):
            addresses = answer_addresses(response, question)
            if addresses is None:
                return reply_with(response, question, RCODE_SERVFAIL) or b""
            if addresses:
                try:
                    resolver.learned.install(resolver.views, question.name, addresses, resolver.grace_ns,
                                             _boottime_ns())
                except Exception as exc:
                    log.error("dns_install_failed", sandbox=resolver.sandbox, name=question.name, error=str(exc))
                    return reply_with(response, question, RCODE_SERVFAIL) or b""
        return response

    # ---- the UDP loop -----------------------------------------------------------

    def _serve(self) -> None:
        next_sweep = next_deadline = time.monotonic() + SWEEP_S
        while not self._stopping:
            timeout = max(0.0, min(next_sweep, next_deadline) - time.monotonic())
            try:
                events = self._selector.select(timeout)
            except OSError:
                time.sleep(0.01)
                continue
            for key, _ in events:
                if key.data is None:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                try:
                    key.data(key.fileobj)
                except Exception:
                    log.exception("dns_forwarder_error")
            now = time.monotonic()
            next_deadline = self._expire(now)
            if now >= next_sweep:
                next_sweep = now + SWEEP_S
                try:
                    self._sweep()
                except Exception:
                    log.exception("dns_sweep_failed")

    def _drain(self, handle: Callable[[socket.socket, SandboxResolver, Listener, bytes, tuple[object, ...]], None],
               resolver: SandboxResolver, listener: Listener, sock: socket.socket) -> None:
        """A burst of datagrams from one socket, each to ``handle`` under the
        lock; then the other sockets get their turn."""
        for _ in range(64):
            try:
                packet, peer = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            with self._lock:
                if resolver.sandbox not in self._resolvers or self._stopping:
                    return
                handle(sock, resolver, listener, packet, peer)

    def _query(self, sock: socket.socket, resolver: SandboxResolver, listener: Listener, packet: bytes,
               client: tuple[object, ...]) -> None:
        reply, question = self._decide(resolver, packet, IPPROTO_UDP)
        if question is None:
            if reply:
                with contextlib.suppress(OSError):
                    sock.sendto(reply, client)
            return
        pending = Pending(resolver, listener, client, question, packet, 0, 0.0)
        self._send_upstream(pending)

    def _send_upstream(self, pending: Pending) -> None:
        resolver = pending.resolver
        while pending.upstream_index < len(resolver.upstreams):
            upstream = resolver.upstreams[pending.upstream_index]
            family = socket.AF_INET if upstream.address.version == 4 else socket.AF_INET6
            sock = pending.listener.upstream.get(family)
            if sock is not None:
                msg_id = self._next_id
                self._next_id = self._next_id % 65535 + 1
                try:
                    sock.sendto(msg_id.to_bytes(2, "big") + pending.query[2:], (str(upstream.address), upstream.port))
                except OSError:
                    pending.upstream_index += 1
                    continue
                pending.deadline = time.monotonic() + UPSTREAM_TIMEOUT_S
                self._pending[(sock.fileno(), msg_id)] = pending
                return
            pending.upstream_index += 1
        self._reply_udp(pending, reply_with(pending.query, pending.question, RCODE_SERVFAIL))

    def _answer(self, sock: socket.socket, _resolver: SandboxResolver, _listener: Listener, packet: bytes,
                peer: tuple[object, ...]) -> None:
        if len(packet) < 12:
            return
        pending = self._pending.get((sock.fileno(), int.from_bytes(packet[:2], "big")))
        if pending is None:
            return
        if pending.upstream_index >= len(pending.resolver.upstreams):
            return
        upstream = pending.resolver.upstreams[pending.upstream_index]
        if ipaddress.ip_address(str(peer[0]).split("%")[0]) != upstream.address or peer[1] != upstream.port:
            return  # not from the resolver asked: ignore (a spoofed answer)
        del self._pending[(sock.fileno(), int.from_bytes(packet[:2], "big"))]
        response = pending.question.msg_id.to_bytes(2, "big") + packet[2:]
        self._reply_udp(pending, self._answered(pending.resolver, pending.question, response))

    def _reply_udp(self, pending: Pending, reply: bytes | None) -> None:
        if not reply:
            return
        sock = pending.listener.udp4 if len(pending.client) == 2 else pending.listener.udp6
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.sendto(reply, pending.client)

    def _expire(self, now: float) -> float:
        """Ask the next upstream for what the last one left unanswered (SERVFAIL
        after the last); returns when the next pending query times out. One pass."""
        with self._lock:
            late = []
            next_deadline = now + SWEEP_S
            for key, pending in self._pending.items():
                if pending.deadline <= now:
                    late.append(key)
                else:
                    next_deadline = min(next_deadline, pending.deadline)
            for key in late:
                pending = self._pending.pop(key)
                pending.upstream_index += 1
                self._send_upstream(pending)
                if pending.deadline > now:
                    next_deadline = min(next_deadline, pending.deadline)
            return next_deadline

    # ---- TCP ------------------------------------------------------------------------

    def _accept(self, resolver: SandboxResolver, listener: Listener, sock: socket.socket) -> None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with self._lock:
            if listener.tcp_connections >= MAX_TCP_CONNECTIONS:
                conn.close()
                return
            listener.tcp_connections += 1
        threading.Thread(target=self._serve_tcp, args=(conn, resolver, listener), name="dns-tcp",
                         daemon=True).start()

    def _serve_tcp(self, conn: socket.socket, resolver: SandboxResolver, listener: Listener) -> None:
        try:
            netns.enter(listener.upstream_namespace)
            conn.setblocking(True)
            conn.settimeout(TCP_IDLE_TIMEOUT_S)
            while True:
                query = read_framed(conn)
                if query is None:
                    return
                with self._lock:
                    if resolver.sandbox not in self._resolvers:
                        return
                    reply, question = self._decide(resolver, query, IPPROTO_TCP)
                    upstreams = resolver.upstreams
                if question is not None:
                    response = ask_tcp(upstreams, query)
                    with self._lock:
                        if response is None:
                            reply = reply_with(query, question, RCODE_SERVFAIL)
                        else:
                            reply = self._answered(resolver, question, response)
                if not reply:
                    return
                conn.sendall(len(reply).to_bytes(2, "big") + reply)
        except (OSError, netns.NetnsError):
            return
        finally:
            conn.close()
            with self._lock:
                listener.tcp_connections -= 1
