"""enforcer.kinds: one entry per denial kind, and each entry agrees with the
proto, the kernel's header and the audit records it describes."""

from __future__ import annotations

from enforcer import kinds
from enforcer.kernel import layout
from enforcer.v1 import enforcer_pb2 as pb


def test_every_wire_kind_has_exactly_one_entry():
    wire = {value.number for value in pb.DenialKind.DESCRIPTOR.values if value.number}
    assert sorted(kind.proto for kind in kinds.KINDS) == sorted(wire)
    assert len(kinds.BY_NAME) == len(kinds.KINDS)


def test_each_entry_names_a_kernel_kind_a_detail_field_and_its_counters():
    numbers = [layout.kind_number(kind.kernel_macro) for kind in kinds.KINDS]
    assert len(set(numbers)) == len(numbers) and all(0 < n < layout.NUM_KINDS for n in numbers)
    event_fields = set(pb.DenialEvent.DESCRIPTOR.fields_by_name)
    assert {kind.detail for kind in kinds.KINDS} <= event_fields
    assert set(kinds.COUNTED) <= set(pb.SandboxStats.DESCRIPTOR.fields_by_name)


def test_each_kinds_csv_columns_are_fields_of_its_audit_record():
    for kind in kinds.KINDS:
        record = kind.audit(pb.DenialEvent(kind=kind.proto))
        assert set(kind.csv_columns) <= set(record), kind.name


def test_every_kind_renders_a_line_a_sentence_and_an_ocsf_class():
    actor = {"pid": 7, "name": "agent"}
    for kind in kinds.KINDS:
        event = pb.DenialEvent(kind=kind.proto, sandbox="sb")
        record = {"sandbox": "sb", **kind.audit(event)}
        assert kind.text(event)
        assert "sb" in kind.message(record, "refused")
        rendered = kind.ocsf(record, True, actor, "host")
        assert rendered.fields["class_uid"] in (1007, 4001, 4003), kind.name
