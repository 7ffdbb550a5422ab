"""Property tests: whatever document or wire message comes in, parsing either
gives a policy or refuses with a PolicyError that names the field and says
why. Never another exception (a crash in the daemon's request path)."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcer.policy import PolicyError, parse_policy, policy_to_document
from enforcer.v1 import enforcer_pb2 as pb
from enforcer.wire import policy_from_proto, policy_to_proto

# "field.path: reason", the path starting at a field of the document (network.allow[3].ports[0],
# labels['odd key']); a document that is not a mapping at all is "policy: ...".
FIELDS = ("sandbox", "target", "labels", "mode", "network", "exec", "devices", "escalate", "syscalls", "policy")
# A quoted key is Python's repr of it: a quote of the other kind, or an escaped one, can be inside.
_QUOTED = r"""(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
FIELD_PATH = re.compile(rf"^(\w+|\[{_QUOTED}\])(?:\.[\w./-]+|\[\d+\]|\[{_QUOTED}\])*: \S")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=40), st.binary(max_size=10))
anything = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                        max_leaves=20)


def plausible(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly values of the right shape, sometimes anything at all."""
    return st.one_of(value, value, value, anything)


address = st.one_of(st.ip_addresses().map(str), st.sampled_from(["10.0.0.0/8", "::/0", "1.2.3.4/33", "x", "", "0/0"]),
                    st.sampled_from(["pypi.org", "*.pythonhosted.org", "PyPI.Org.", "*.", "a..b", "-x.org", "bücher.de",
                                     "10.0.0.300", "*.*.x", "a" * 64 + ".org"]),
                    st.from_regex(r"(\*\.)?[a-z0-9_-]{1,10}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True))
dns_section = st.fixed_dictionaries({}, optional={
    "upstream": plausible(st.lists(st.one_of(st.ip_addresses().map(str),
                                             st.sampled_from(["10.0.0.2:5353", "[fd00::2]:53", "[::1]:0", "dns.google",
                                                              "1.2.3.4:99999"])), max_size=3)),
    "grace": plausible(st.sampled_from(["30s", "0", 0, 3600, "2h", -1, "soon"]))})
port = st.one_of(st.integers(-5, 70000), st.text(max_size=12), st.builds(lambda a, b: f"{a}-{b}", st.integers(0, 70000),
                                                                          st.integers(0, 70000)))
rule = st.fixed_dictionaries({"to": plausible(address)},
                             optional={"ports": plausible(st.lists(port, max_size=4)),
                                       "protocol": plausible(st.sampled_from(["tcp", "udp", "any", "icmp", ""]))})
exec_path = st.one_of(st.sampled_from(["/usr/bin/python3", "/usr/lib/", "relative", "/a/../b", "/x//y", "/", "."]),
                      st.text(max_size=30))
syscall = st.one_of(st.sampled_from(["ptrace", "bpf", "mount", "getpid", "nope", "", "PTRACE"]),
                    st.integers(-2, 500), st.text(max_size=12))
documents = st.fixed_dictionaries(
    {"sandbox": plausible(st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)),
     "target": plausible(st.one_of(st.fixed_dictionaries({"cgroup": plausible(st.text(max_size=30))}),
                                   st.fixed_dictionaries({"pid": plausible(st.integers(-10, 2**40))}),
                                   st.fixed_dictionaries({"container": plausible(st.text(max_size=70))})))},
    optional={
        "labels": plausible(st.dictionaries(st.text(max_size=70), st.text(max_size=70), max_size=5)),
        "mode": plausible(st.sampled_from(["enforce", "audit", "off"])),
        "network": plausible(st.fixed_dictionaries({}, optional={
            "default": plausible(st.sampled_from(["allow", "deny", "maybe"])),
            "allow": plausible(st.lists(rule, max_size=4)), "deny": plausible(st.lists(rule, max_size=4)),
            "dns": plausible(dns_section)})),
        "exec": plausible(st.fixed_dictionaries({}, optional={
            "default": plausible(st.sampled_from(["allow", "deny"])),
            "allow": plausible(st.lists(exec_path, max_size=3)), "deny": plausible(st.lists(exec_path, max_size=3))})),
        "devices": plausible(st.fixed_dictionaries({}, optional={"gpu": plausible(st.sampled_from(["allow", "deny"]))})),
        "syscalls": plausible(st.fixed_dictionaries({}, optional={
            "default": plausible(st.sampled_from(["allow", "deny"])),
            "allow": plausible(st.lists(syscall, max_size=4)), "deny": plausible(st.lists(syscall, max_size=4))})),
        "escalate": plausible(st.fixed_dictionaries({}, optional={
            "after": plausible(st.integers(-1, 300)), "within": plausible(st.sampled_from(["10s", "1m", "2d", "0s"])),
            "action": plausible(st.sampled_from(["quarantine", "freeze", "kill", "reboot"]))})),
        "extra": anything,
    })


def assert_clear(exc: PolicyError) -> None:
    assert_clear_text(str(exc))


def assert_clear_text(text: str) -> None:
    """A policy error's text: the field's path, a colon, the reason."""
    if text.startswith("must be a policy (a mapping)"):  # the document itself
        return
    match = FIELD_PATH.match(text)
    assert match, f"not 'field: reason': {text}"
    assert match.group(1) in FIELDS or "unknown field" in text, f"not a field of the policy: {text}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(documents, anything))
def test_any_document_parses_or_names_the_field(doc: Any) -> None:
    try:
        policy = parse_policy(doc)
    except PolicyError as exc:
        assert_clear(exc)
        return
    # What was accepted survives the round trips unchanged.
    assert parse_policy(policy_to_document(policy)) == policy
    assert policy_from_proto(policy_to_proto(policy)) == policy


def wire_messages() -> st.SearchStrategy[pb.Policy]:
    enum_value = st.integers(-3, 9)
    rule = st.builds(lambda to, ports, proto: pb.NetworkRule(
        to=to, ports=[pb.PortRange(first=a, last=b) for a, b in ports], protocol=proto),
        st.text(max_size=25), st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=3),
        enum_value)

    def build(sandbox: str, target: Any, labels: dict[str, str], mode: int, default: int, allow: list[Any],
              deny: list[Any], exec_: Any, gpu: int, escalate: Any, syscalls: Any) -> pb.Policy:
        msg = pb.Policy(sandbox=sandbox, labels=labels, mode=mode,
                        network=pb.NetworkPolicy(default=default, allow=allow, deny=deny),
                        devices=pb.DevicePolicy(gpu=gpu))
        if target is not None:
            msg.target.CopyFrom(target)
        if exec_ is not None:
            msg.exec.CopyFrom(exec_)
        if escalate is not None:
            msg.escalate.CopyFrom(escalate)
        if syscalls is not None:
            msg.syscalls.CopyFrom(syscalls)
        return msg

    return st.builds(
        build, st.text(max_size=30),
        st.one_of(st.none(), st.builds(lambda c: pb.Target(cgroup=c), st.text(max_size=30)),
                  st.builds(lambda p: pb.Target(pid=p), st.integers(-2**31, 2**31 - 1)),
                  st.builds(lambda c: pb.Target(container=c), st.text(max_size=70))),
        st.dictionaries(st.text(max_size=70), st.text(max_size=70), max_size=4), enum_value, enum_value,
        st.lists(rule, max_size=4), st.lists(rule, max_size=4),
        st.one_of(st.none(), st.builds(lambda d, a, n: pb.ExecPolicy(default=d, allow=a, deny=n), enum_value,
                                       st.lists(exec_path, max_size=3), st.lists(exec_path, max_size=3))),
        enum_value,
        st.one_of(st.none(), st.builds(lambda a, w, act: pb.Escalation(after=a, within_seconds=w, action=act),
                                       st.integers(0, 2**32 - 1), st.floats(allow_nan=True), enum_value)),
        st.one_of(st.none(), st.builds(lambda d, a, n: pb.SyscallPolicy(default=d, allow=a, deny=n), enum_value,
                                       st.lists(syscall.map(str), max_size=3), st.lists(syscall.map(str), max_size=3))))


@settings(max_examples=400, deadline=None)
@given(wire_messages())
def test_any_wire_message_converts_or_names_the_field(msg: pb.Policy) -> None:
    try:
        policy_from_proto(msg)
    except PolicyError as exc:
        assert_clear(exc)
