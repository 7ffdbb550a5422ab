"""DNS messages as the forwarder needs them: the one question of a query
(parsed by hand: the hot path), an answer with an error code and no records,
and the addresses of an upstream's answer along its CNAME chain (dnspython)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.rdatatype

MAX_TTL_S = 3600           # an answer's TTL is honoured up to this
RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NOTIMP, RCODE_REFUSED = 1, 2, 4, 5
TYPE_A, TYPE_AAAA = 1, 28
_HEADER = struct.Struct("!HHHHHH")
QR_BIT = 0x8000
OPCODE_MASK = 0x7800


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
