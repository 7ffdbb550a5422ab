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
import errno
import ipaddress
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.rdatatype
import structlog

from enforcer import netns
from enforcer.kernel import layout
from enforcer.kernel.encode import IPPROTO_TCP, IPPROTO_UDP, PROTOCOL_NUMBERS
from enforcer.kernel.events import DNS_DENIED, DNS_NOT_ALLOWED, DnsDetail
from enforcer.kernel.guard import SandboxGuard
from enforcer.kernel.names import Grant, grants_value, name_key, parse_grants, parse_name_key
from enforcer.policy import Mode, NetworkPolicy, Policy, Upstream

log = structlog.get_logger("enforcer.dns")

MAX_TTL_S = 3600           # an answer's TTL is honoured up to this
UPSTREAM_TIMEOUT_S = 2.0   # then the next upstream, then SERVFAIL
TCP_IDLE_TIMEOUT_S = 10.0
MAX_TCP_CONNECTIONS = 64   # per sandbox and namespace
# An address already allowed until at least this close to the new expiry is
# not written again: a flood of identical answers costs no map writes.
REFRESH_SLACK_NS = 500_000_000
SWEEP_S = 1.0
# One sandbox's share of the learned-address map (ENF_MAX_NAME_ADDRS over all):
# a sandbox resolving ever new addresses (a wildcard name, say) evicts its own
# soonest-expiring address instead of filling the map for everyone.
MAX_LEARNED_PER_SANDBOX = 2048
RETRY_NAMESPACE_S = 1.0  # a namespace whose forwarder could not be made is tried again after this
RESOLV_CONF = Path("/etc/resolv.conf")

RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NOTIMP, RCODE_REFUSED = 1, 2, 4, 5
TYPE_A, TYPE_AAAA = 1, 28
_HEADER = struct.Struct("!HHHHHH")
QR_BIT = 0x8000
OPCODE_MASK = 0x7800


# sandbox, slot, detail, layout.ACTION_* -> False if it could not be taken (counted lost)
Reporter = Callable[[str, int, DnsDetail, int], bool]


class ForwarderError(RuntimeError):
    """A sandbox's DNS cannot be served (no loopback in its namespace, no upstream)."""


# ---- wire helpers (the hot path parses only the question itself) -------------

@dataclass(frozen=True)
class Question:
    msg_id: int
    flags: int
    name: str        # lowercase, no final dot
    qtype: int
    end: int         # offset just past the question


def parse_question(data: bytes) -> Question | None:
    """The one question of a query, or None when it is not a well-formed
    single-question query (it is answered FORMERR if it has a header)."""
    if len(data) < 12:
        return None
    msg_id, flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(data)
    if flags & QR_BIT or qdcount != 1:
        return None
    labels = []
    offset = 12
    while True:
        if offset >= len(data):
            return None
        length = data[offset]
        offset += 1
        if length == 0:
            break
        if length > 63 or offset + length > len(data):
            return None  # compression pointers have no place in a query's question
        labels.append(data[offset:offset + length])
        offset += length
    if offset + 4 > len(data):
        return None
    qtype = int.from_bytes(data[offset:offset + 2], "big")
    try:
        name = b".".join(labels).decode("ascii").lower()
    except UnicodeDecodeError:
        name = b".".join(labels).decode("latin-1").lower()
    return Question(msg_id, flags, name, qtype, offset + 4)


def reply_with(data: bytes, question: Question | None, rcode: int) -> bytes | None:
    """A header-and-question answer with ``rcode`` and no records."""
    if question is None:
        if len(data) < 12:
            return None
        msg_id, flags = struct.unpack_from("!HH", data)
        return _HEADER.pack(msg_id, QR_BIT | (flags & (OPCODE_MASK | 0x0100)) | rcode, 0, 0, 0, 0)
    flags = QR_BIT | (question.flags & (OPCODE_MASK | 0x0100)) | 0x0080 | rcode  # RD copied, RA set
    return _HEADER.pack(question.msg_id, flags, 1, 0, 0, 0) + data[12:question.end]


def type_name(qtype: int) -> str:
    try:
        return dns.rdatatype.to_text(qtype)  # type: ignore[arg-type]
    except Exception:
        return f"TYPE{qtype}"


def answer_addresses(response: bytes, question: Question) -> list[tuple[int, bytes, int]] | None:
    """(family, address bytes, ttl) of every A/AAAA record on the CNAME chain
    from the asked name; None if the answer is not one to this question."""
    try:
        message = dns.message.from_wire(response, ignore_trailing=True)
    except dns.exception.DNSException:
        return None
    if len(message.question) != 1:
        return None
    asked = message.question[0]
    if asked.name.to_text(omit_final_dot=True).lower() != question.name or asked.rdtype != question.qtype:
        return None
    chain = {asked.name}
    chain_ttl = MAX_TTL_S
    for _ in range(16):  # CNAMEs may come in any order; a chain is short
        grew = False
        for rrset in message.answer:
            if rrset.rdtype == dns.rdatatype.CNAME and rrset.name in chain:
                for rdata in rrset:
                    if rdata.target not in chain:
                        chain.add(rdata.target)
                        chain_ttl = min(chain_ttl, rrset.ttl)
                        grew = True
        if not grew:
            break
    found: list[tuple[int, bytes, int]] = []
    for rrset in message.answer:
        if rrset.name not in chain or rrset.rdtype not in (TYPE_A, TYPE_AAAA):
            continue
        family = int(socket.AF_INET if rrset.rdtype == TYPE_A else socket.AF_INET6)
        ttl = min(rrset.ttl, chain_ttl, MAX_TTL_S)
        for rdata in rrset:
            found.append((family, socket.inet_pton(family, rdata.address), ttl))
    return found


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


# ---- per sandbox ---------------------------------------------------------------

@dataclass
class NameView:
    """What one generation of a sandbox's policy says about names."""

    generation: int
    network: NetworkPolicy
    audit: bool


@dataclass
class Learned:
    """Addresses learned for one generation: (family, address) -> port rule ->
    (expiry, name). The names let a replaced policy re-judge them."""

    entries: dict[tuple[int, bytes], dict[tuple[int, int, int], tuple[int, str | None]]] = field(default_factory=dict)


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


@dataclass
class SandboxResolver:
    sandbox: str
    slot: int
    views: list[NameView]        # [current] or, while a replace is under way, [current, next]
    upstreams: tuple[Upstream, ...]
    upstream_given: bool         # from the policy (reached from the sandbox's namespace) or the host's
    grace_ns: int
    listeners: dict[int, Listener] = field(default_factory=dict)  # namespace inode -> sockets
    learned: dict[int, Learned] = field(default_factory=dict)      # generation -> addresses
    counters: layout.DnsCounters = field(default_factory=layout.DnsCounters)
    rate_window_ns: int = 0
    rate_count: int = 0

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
                                           round(network.dns.grace * 1e9))
                resolver.counters = self._guard.read_dns_counters(slot)
            change = DnsChange(policy.sandbox, generation, created)
            try:
                self._listen(resolver, cgroup_path)
                if not created:
                    resolver.views = [resolver.current, view]
                    self._carry_forward(resolver, view)
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
            for generation in [g for g in resolver.learned if g != change.generation]:
                self._forget_generation(resolver, generation)

    def rollback(self, change: DnsChange) -> None:
        with self._lock:
            resolver = self._resolvers.get(change.sandbox)
            if resolver is None:
                return
            if change.created:
                self._close_resolver(self._resolvers.pop(change.sandbox), forget_kernel=True)
                return
            resolver.views = [v for v in resolver.views if v.generation != change.generation]
            self._forget_generation(resolver, change.generation)

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
            resolver = self._resolvers[change.sandbox]
            table = resolver.learned.setdefault(generation, Learned())
            for key, value in learned:
                _, family, addr = parse_name_key(key)
                ports = table.entries.setdefault((family, addr), {})
                for grant in parse_grants(value):
                    ports[(grant.first, grant.last, grant.protocol)] = (grant.expires_ns, None)

    def forget_stale_forwarders(self) -> None:
        """Forwarder entries no sandbox of this daemon serves (left by an earlier one)."""
        with self._lock:
            live = {(r.slot, lst.cookie) for r in self._resolvers.values() for lst in r.listeners.values()}
            for slot, cookie in self._guard.forwarder_keys():
                if (slot, cookie) not in live:
                    self._guard.clear_forwarder(slot, cookie)

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
                listener = netns.run_in(namespace, lambda ns=namespace: self._open_listener(ns))  # type: ignore[misc]
            except BaseException:
                if namespace is not None:
                    namespace.close()
                raise
            try:
                self._open_upstream(resolver, listener)
                self._guard.set_forwarder(resolver.slot, listener.cookie, listener.ports())
            except BaseException:
                self._drop_listener(listener)
                raise
            resolver.listeners[inode] = listener
            for sock in (listener.udp4, listener.udp6):
                if sock is not None:
                    self._selector.register(sock, selectors.EVENT_READ, ("query", resolver, listener))
            for sock in (listener.tcp4, listener.tcp6):
                if sock is not None:
                    self._selector.register(sock, selectors.EVENT_READ, ("accept", resolver, listener))
        self._wake_w.send(b"x")

    def _open_upstream(self, resolver: SandboxResolver, listener: Listener) -> None:
        """The sockets that ask the upstreams, in place of any earlier ones. A
        resolver the policy names is reached as the sandbox would reach it (from
        its namespace); the host's resolvers from the daemon's own."""
        namespace = listener.namespace if resolver.upstream_given else None
        sockets = netns.run_in(namespace, lambda: self._upstream_sockets(resolver))
        for sock in listener.upstream.values():
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            self._pending = {k: p for k, p in self._pending.items() if k[0] != sock.fileno()}
            sock.close()
        listener.upstream, listener.upstream_namespace = sockets, namespace
        for sock in sockets.values():
            self._selector.register(sock, selectors.EVENT_READ, ("answer", resolver, listener))

    def _open_listener(self, namespace: netns.NetworkNamespace | None) -> Listener:
        """Runs inside the namespace."""
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

    @staticmethod
    def _upstream_sockets(resolver: SandboxResolver) -> dict[int, socket.socket]:
        sockets: dict[int, socket.socket] = {}
        for family in {socket.AF_INET if u.address.version == 4 else socket.AF_INET6 for u in resolver.upstreams}:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sockets[family] = sock
        return sockets

    def _drop_listener(self, listener: Listener) -> None:
        for sock in listener.sockets():
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
        listener.close()

    def _close_resolver(self, resolver: SandboxResolver, forget_kernel: bool) -> None:
        for listener in resolver.listeners.values():
            if forget_kernel:
                self._guard.clear_forwarder(resolver.slot, listener.cookie)
            self._drop_listener(listener)
        resolver.listeners.clear()
        self._pending = {k: p for k, p in self._pending.items() if p.resolver is not resolver}
        if forget_kernel:
            for generation in list(resolver.learned):
                self._forget_generation(resolver, generation)

    # ---- learned addresses ----------------------------------------------------

    def _forget_generation(self, resolver: SandboxResolver, generation: int) -> None:
        table = resolver.learned.pop(generation, None)
        if table:
            self._guard.delete_entries(layout.MAP_NAME_ADDRS, [
                name_key(generation, family, addr) for family, addr in table.entries])

    def _carry_forward(self, resolver: SandboxResolver, view: NameView) -> None:
        """What the current generation learned, re-judged by the next policy."""
        source = resolver.learned.get(resolver.current.generation)
        if source is None:
            return
        target = resolver.learned.setdefault(view.generation, Learned())
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        for (family, addr), ports in source.entries.items():
            for _, (expires, name) in ports.items():
                if name is None or expires <= now:
                    continue
                rules = view.network.name_allowed(name)
                if rules:
                    self._learn(target, family, addr, rules, expires, name)
        entries = [(name_key(view.generation, family, addr), self._value(ports))
                   for (family, addr), ports in target.entries.items()]
        self._guard.write_entries(layout.MAP_NAME_ADDRS, entries)

    @staticmethod
    def _learn(table: Learned, family: int, addr: bytes, rules: tuple, expires: int, name: str) -> bool:
        """Merge a grant; True if the kernel's entry must be written."""
        ports = table.entries.setdefault((family, addr), {})
        changed = False
        for rule in rules:
            protocol = PROTOCOL_NUMBERS[rule.protocol]
            for r in rule.port_ranges():
                key = (r.first, r.last, protocol)
                old = ports.get(key)
                if old is None or old[0] < expires - REFRESH_SLACK_NS:
                    ports[key] = (max(expires, old[0]) if old else expires, name)
                    changed = True
        return changed

    @staticmethod
    def _value(ports: dict[tuple[int, int, int], tuple[int, str | None]]) -> bytes:
        grants = sorted((Grant(expires, first, last, protocol) for (first, last, protocol), (expires, _) in
                         ports.items()), reverse=True)[:layout.MAX_NAME_GRANTS]
        return grants_value(grants)

    def _install(self, resolver: SandboxResolver, name: str, addresses: list[tuple[int, bytes, int]]) -> None:
        """Allow the answer's addresses in every generation the kernel may judge
        by right now whose policy allows the name. Under the lock."""
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        for view in resolver.views:
            rules = view.network.name_allowed(name)
            if not rules:
                continue
            table = resolver.learned.setdefault(view.generation, Learned())
            writes = []
            for family, addr, ttl in addresses:
                if (family, addr) not in table.entries and len(table.entries) >= MAX_LEARNED_PER_SANDBOX:
                    self._evict(table, view.generation)
                expires = now + ttl * 1_000_000_000 + resolver.grace_ns
                if self._learn(table, family, addr, rules, expires, name):
                    writes.append((name_key(view.generation, family, addr), self._value(table.entries[(family, addr)])))
            self._guard.write_entries(layout.MAP_NAME_ADDRS, writes)

    def _evict(self, table: Learned, generation: int) -> None:
        """Make room in a sandbox's share: the address that would expire first goes."""
        family, addr = min(table.entries, key=lambda k: max(expires for expires, _ in table.entries[k].values()))
        del table.entries[(family, addr)]
        self._guard.delete_entries(layout.MAP_NAME_ADDRS, [name_key(generation, family, addr)])

    def _sweep(self) -> None:
        """Drop what has expired (the kernel already ignores it: this frees room)."""
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        with self._lock:
            for resolver in self._resolvers.values():
                for generation, table in resolver.learned.items():
                    gone, rewrite = [], []
                    for (family, addr), ports in list(table.entries.items()):
                        live = {k: v for k, v in ports.items() if v[0] > now}
                        if not live:
                            del table.entries[(family, addr)]
                            gone.append(name_key(generation, family, addr))
                        elif len(live) != len(ports):
                            table.entries[(family, addr)] = live
                            rewrite.append((name_key(generation, family, addr), self._value(live)))
                    self._guard.delete_entries(layout.MAP_NAME_ADDRS, gone)
                    self._guard.write_entries(layout.MAP_NAME_ADDRS, rewrite)

    # ---- denials ----------------------------------------------------------------

    def _refused(self, resolver: SandboxResolver, question: Question, reason: int, transport: int) -> None:
        """Count exactly, report within the event budget. Under the lock."""
        audit = resolver.current.audit
        counters = resolver.counters
        if audit:
            counters.audited += 1
        else:
            counters.refused += 1
        report = True
        if self._events_per_sec:
            now = time.monotonic_ns()
            if now - resolver.rate_window_ns >= 1_000_000_000:
                resolver.rate_window_ns, resolver.rate_count = now, 0
            if resolver.rate_count >= self._events_per_sec:
                counters.suppressed += 1
                report = False
            else:
                resolver.rate_count += 1
        if report:
            detail = DnsDetail(question.name, type_name(question.qtype), reason, transport)
            action = layout.ACTION_AUDITED if audit else layout.ACTION_REFUSED
            if self._report is None or not self._report(resolver.sandbox, resolver.slot, detail, action):
                counters.lost += 1
        self._guard.write_dns_counters(resolver.slot, counters)

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
                    self._install(resolver, question.name, addresses)
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
                    self._handle(key.fileobj, key.data)  # type: ignore[arg-type]
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

    def _handle(self, sock: socket.socket, data: tuple[str, SandboxResolver, Listener]) -> None:
        what, resolver, listener = data
        if what == "accept":
            self._accept(sock, resolver, listener)
            return
        for _ in range(64):  # a burst at a time, then the other sockets get their turn
            try:
                packet, peer = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            with self._lock:
                if resolver.sandbox not in self._resolvers or self._stopping:
                    return
                if what == "query":
                    self._query(sock, resolver, listener, packet, peer)
                else:
                    self._answer(sock, packet, peer)

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

    def _answer(self, sock: socket.socket, packet: bytes, peer: tuple[object, ...]) -> None:
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

    def _accept(self, sock: socket.socket, resolver: SandboxResolver, listener: Listener) -> None:
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
                query = _read_framed(conn)
                if query is None:
                    return
                with self._lock:
                    if resolver.sandbox not in self._resolvers:
                        return
                    reply, question = self._decide(resolver, query, IPPROTO_TCP)
                    upstreams = resolver.upstreams
                if question is not None:
                    response = _ask_tcp(upstreams, query)
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


def _read_framed(conn: socket.socket) -> bytes | None:
    head = _read_exactly(conn, 2)
    if head is None:
        return None
    return _read_exactly(conn, int.from_bytes(head, "big"))


def _read_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _ask_tcp(upstreams: tuple[Upstream, ...], query: bytes) -> bytes | None:
    for upstream in upstreams:
        try:
            with socket.create_connection((str(upstream.address), upstream.port), timeout=UPSTREAM_TIMEOUT_S) as s:
                s.sendall(len(query).to_bytes(2, "big") + query)
                response = _read_framed(s)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, None):
                log.warning("dns_upstream_tcp_failed", upstream=str(upstream), error=str(exc))
            continue
        if response is not None and response[:2] == query[:2]:
            return response
    return None
