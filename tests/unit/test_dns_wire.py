"""enforcer.daemon.dns.wire: the forwarder's question parser, its error
answers and the addresses it takes from an upstream's answer."""

from __future__ import annotations

import socket

import dns.message
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from enforcer.daemon.dns import wire


def query(name: str, qtype: str = "A") -> bytes:
    return dns.message.make_query(name, qtype).to_wire()


def test_parse_question():
    q = wire.parse_question(query("PyPI.Org", "AAAA"))
    assert q is not None and (q.name, q.qtype) == ("pypi.org", 28)
    assert wire.parse_question(b"\x00" * 5) is None
    response = dns.message.make_response(dns.message.make_query("pypi.org", "A")).to_wire()
    assert wire.parse_question(response) is None  # an answer, not a query


def test_refusal_keeps_id_and_question():
    data = query("evil.example")
    q = wire.parse_question(data)
    reply = dns.message.from_wire(wire.reply_with(data, q, wire.RCODE_REFUSED))
    assert reply.id == dns.message.from_wire(data).id and reply.rcode() == 5
    assert reply.question[0].name.to_text() == "evil.example." and not reply.answer


def test_answer_addresses_follow_the_cname_chain_only():
    q_wire = dns.message.make_query("www.pypi.org", "A")
    response = dns.message.make_response(q_wire)
    response.answer += [
        dns.rrset.from_text("www.pypi.org.", 60, "IN", "CNAME", "cdn.fastly.net."),
        dns.rrset.from_text("cdn.fastly.net.", 300, "IN", "A", "151.101.0.223", "151.101.64.223"),
        dns.rrset.from_text("unrelated.example.", 300, "IN", "A", "192.0.2.1"),
    ]
    q = wire.parse_question(q_wire.to_wire())
    assert q is not None
    found = wire.answer_addresses(response.to_wire(), q)
    assert sorted(found or []) == [(socket.AF_INET, socket.inet_aton("151.101.0.223"), 60),
                                   (socket.AF_INET, socket.inet_aton("151.101.64.223"), 60)]
    other = wire.parse_question(query("other.example"))
    assert other is not None and wire.answer_addresses(response.to_wire(), other) is None


def test_ttl_is_capped():
    q_wire = dns.message.make_query("pypi.org", "A")
    response = dns.message.make_response(q_wire)
    response.answer.append(dns.rrset.from_text("pypi.org.", 10 ** 6, "IN", "A", "151.101.0.223"))
    q = wire.parse_question(q_wire.to_wire())
    assert q is not None
    assert wire.answer_addresses(response.to_wire(), q) == [(socket.AF_INET, socket.inet_aton("151.101.0.223"),
                                                            wire.MAX_TTL_S)]


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda name, qtype, junk: query(name, qtype)[:junk] if junk else query(name, qtype),
                           st.from_regex(r"[a-zA-Z0-9-]{1,20}(\.[a-zA-Z0-9-]{1,20}){0,3}", fullmatch=True),
                           st.sampled_from(["A", "AAAA", "TXT", "ANY", "HTTPS"]), st.integers(0, 40))))
def test_any_bytes_get_a_question_an_error_answer_or_nothing(data: bytes):
    """What a sandbox sends the forwarder never raises: a question, or an
    answer with an error code, or nothing at all (fewer than 12 bytes)."""
    question = wire.parse_question(data)
    if question is not None:
        assert question.end <= len(data) and question.name == question.name.lower()
        reply = wire.reply_with(data, question, wire.RCODE_REFUSED)
    else:
        reply = wire.reply_with(data, None, wire.RCODE_FORMERR)
    if len(data) < 12:
        assert reply is None
    else:
        assert reply is not None and reply[:2] == data[:2] and reply[2] & 0x80
