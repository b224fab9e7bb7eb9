"""MLLP framing, the ER7 reader (checked against hl7apy), the field mapping, and the property
that parsing + mapping + processing answer every input with an ACK and never raise."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_segment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hl7 import er7, mapping
from hl7.inbound import handle_frame
from hl7.mllp import END_BLOCK, START_BLOCK, FrameReader, FrameTooLarge
from hl7.models import InboundMessage

DATA = Path(__file__).parent / "data" / "hl7"


# --- MLLP framing ---------------------------------------------------------------------------


def test_frame_split_over_reads_comes_out_once_complete():
    reader = FrameReader()
    assert reader.feed(b"\x0bMSH|a") == []
    assert reader.feed(b"bc\x1c") == []
    assert reader.feed(b"\x0d") == [b"MSH|abc"]
    assert not reader.pending


def test_several_frames_in_one_read_come_out_in_order():
    assert FrameReader().feed(b"\x0bA\x1c\x0d\x0bB\x1c\x0d\x0bC") == [b"A", b"B"]


def test_bytes_outside_frames_are_set_aside_for_the_journal():
    reader = FrameReader()
    assert reader.feed(b"noise\x0bA\x1c\x0dmore") == [b"A"]
    assert reader.discarded == 9
    assert reader.take_discarded() == b"noisemore"
    assert reader.discarded == 0


def test_frame_over_the_limit_raises_with_its_head():
    reader = FrameReader(max_frame_bytes=10)
    with pytest.raises(FrameTooLarge) as raised:
        reader.feed(b"\x0b" + b"X" * 20)
    assert raised.value.head == b"X" * 20
    assert not reader.pending


@given(
    st.lists(st.binary(min_size=0, max_size=50).filter(lambda b: b"\x0b" not in b and b"\x1c" not in b), max_size=5),
    st.integers(1, 7),
)
def test_any_chunking_of_a_stream_yields_the_same_frames(messages, chunk):
    stream = b"".join(START_BLOCK + m + END_BLOCK for m in messages)
    reader, frames = FrameReader(), []
    for i in range(0, len(stream), chunk):
        frames += reader.feed(stream[i : i + chunk])
    assert frames == messages


# --- ER7 reader -------------------------------------------------------------------------------


def test_unescape_undoes_every_hl7_escape():
    escaped = r"a\F\b\S\c\T\d\R\e\E\f\X41\g\.br\h\H\bold" + "\\N\\"
    assert er7.unescape(escaped) == "a|b^c&d~e\\fAg\nhbold"


def test_hl7_null_is_told_apart_from_an_empty_field():
    seg = er7.Message.parse('MSH|^~\\&|A\rPID|1||""|||\r').first("PID")
    assert seg.is_null(3) and seg.get(3) == ""
    assert not seg.is_null(4) and seg.get(4) == ""


def test_senders_own_delimiters_are_used():
    message = er7.Message.parse("MSH#$*@%#APP#FAC\rPID#1##ID1$$$ISS*R$$\rOBR#x@X41@y")
    pid = message.first("PID")
    assert (pid.get(3, 1), pid.get(3, 4), pid.get(3, 1, repetition=1)) == ("ID1", "ISS", "R")
    assert message.first("OBR").get(1) == "xAy"
    assert message.msh.get(3) == "APP"


def test_msh_fields_are_numbered_as_in_the_standard():
    msh = er7.Message.parse("MSH|^~\\&|APP|FAC|RIS|RAD|20260101||ADT^A08|ID9|P|2.5\r").msh
    assert (msh.raw(1), msh.raw(2), msh.get(3), msh.get(9, 2), msh.get(10)) == ("|", "^~\\&", "APP", "A08", "ID9")


def test_text_without_msh_is_refused():
    with pytest.raises(er7.ER7Error):
        er7.Message.parse("PID|1\r")


safe_text = st.text(alphabet=st.characters(blacklist_characters="|^~\\&\r\n", blacklist_categories=("Cs",)), max_size=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(safe_text, min_size=1, max_size=4), min_size=1, max_size=8))
def test_er7_reader_agrees_with_hl7apy_on_fields_and_components(fields):
    body = "|".join("^".join(components) for components in fields)
    text = f"ZZZ|{body}"
    ours = er7.Segment(text, er7.Delimiters())
    theirs = parse_segment(text, version="2.5", validation_level=VALIDATION_LEVEL.TOLERANT)
    for child in theirs.children:
        n = int(child.name.rsplit("_", 1)[1])
        assert ours.raw(n) == child.to_er7()
        parts = child.to_er7().split("^")
        assert [ours.get(n, i + 1) for i in range(len(parts))] == parts


# --- mapping ------------------------------------------------------------------------------------


def seg(text: str) -> er7.Segment:
    return er7.Message.parse("MSH|^~\\&|A\r" + text).segments[1]


def test_hl7_timestamp_without_zone_is_site_local_and_with_zone_is_kept():
    s = seg("ORC|NW")
    assert mapping.parse_ts("202611270930", s, 7) == dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.UTC)
    with_zone = mapping.parse_ts("20261127093000+0700", s, 7)
    assert with_zone.utcoffset() == dt.timedelta(hours=7)


@pytest.mark.parametrize("value", ["2026-11-26", "20261340", "2026112", "tomorrow", "20261126T0930"])
def test_malformed_timestamps_are_data_type_errors(value):
    with pytest.raises(mapping.MappingError) as raised:
        mapping.parse_ts(value, seg("ORC|NW"), 7, component=4)
    assert (raised.value.error.code, raised.value.error.field) == (102, 7)


def test_xcn_becomes_a_dicom_person_name_with_prefix_before_suffix():
    assert mapping.person_name_from_xcn(["0815", "Smith", "Anna", "B", "Jr", "Dr"]) == "Smith^Anna^B^Dr^Jr"


def test_accession_longer_than_sixteen_characters_is_refused_not_truncated():
    message = er7.Message.parse(
        "MSH|^~\\&|A|B|C|D|1||ORM^O01|1|P|2.3.1\rPID|||1\rORC|NW|P1\r"
        + "OBR|1|P1||^^^C^D^L"
        + "|" * 14
        + "A" * 17
        + "|||||CT\r"
    )
    with pytest.raises(mapping.MappingError) as raised:
        mapping.order_items(message)
    assert (raised.value.error.segment, raised.value.error.field) == ("OBR", 18)


def test_priority_codes_map_to_dicom_requested_procedure_priority():
    assert mapping.PRIORITIES["S"] == "STAT" and mapping.PRIORITIES["A"] == "HIGH"
    assert mapping.PRIORITIES["R"] == "ROUTINE" and mapping.PRIORITIES["T"] == "MEDIUM"


# --- property: every input gets an answer -----------------------------------------------------------

REAL_MESSAGES = [p.read_bytes() for p in sorted(DATA.glob("*.hl7"))]
HYPOTHESIS_DB = settings(
    max_examples=int(os.environ.get("HL7_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_answered(ack: bytes) -> None:
    text = ack.decode("latin-1")
    assert text.startswith("MSH|")
    msa = next(s for s in text.split("\r") if s.startswith("MSA|")).split("|")
    assert msa[1] in ("AA", "AE", "AR")
    if msa[1] != "AA":
        assert "\rERR|" in text
    # Not even the catch-all: every refusal is a specific, explained answer.
    assert "internal error" not in text, text


@pytest.mark.django_db(transaction=True)
@HYPOTHESIS_DB
@given(st.binary(max_size=600))
def test_arbitrary_bytes_get_an_ack_never_an_exception(raw):
    assert_answered(handle_frame(raw, "fuzz:1"))


@pytest.mark.django_db(transaction=True)
@HYPOTHESIS_DB
@given(
    st.sampled_from(REAL_MESSAGES),
    st.lists(
        st.tuples(st.integers(0, 2000), st.integers(0, 40), st.text(alphabet='|^~\\&"\r\nAZ09-.é\x00', max_size=12)),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_real_messages_get_an_ack_never_an_exception(message, edits):
    data = bytearray(message)
    for position, cut, insert in edits:
        position = min(position, len(data))
        data[position : position + cut] = insert.encode("utf-8")
    assert_answered(handle_frame(bytes(data), "fuzz:2"))


field_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


@pytest.mark.django_db(transaction=True)
@HYPOTHESIS_DB
@given(
    st.sampled_from(["NW", "CA", "DC", "XO", "SC", "OK", ""]),
    field_text,
    field_text,
    field_text,
    field_text,
    st.sampled_from(["ORM^O01", "OMI^O23", "ADT^A08", "ADT^A40", "ADT^A04"]),
)
def test_generated_orders_and_patients_get_an_ack_never_an_exception(control, pid3, name, start, obr24, msh9):
    message = "\r".join(
        [
            f"MSH|^~\\&|FUZZ|F|RIS|RAD|20261126||{msh9}|{uuid.uuid4().hex}|P|2.5.1||||||UNICODE UTF-8",
            f"PID|||{pid3}||{name}||{start}",
            "MRG|" + pid3[::-1],
            f"ORC|{control}|{name}|||SC||^^^{start}",
            "TQ1|||||||" + start,
            f"OBR|1|{name}||^^^{obr24}|||||||||||||{pid3}|||||{obr24}",
            f"IPC|{pid3}||{start}|{name}|{obr24}",
        ]
    )
    assert_answered(handle_frame(message.encode("utf-8"), "fuzz:3"))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("where", ["PID|||P1||A\x00B", "MSH-3"])
def test_nul_characters_are_refused_with_AE_and_journaled(where):
    sender = "HIS\x00X" if where == "MSH-3" else "HIS"
    pid = "PID|||P1||A^B" if where == "MSH-3" else where
    message = f"MSH|^~\\&|{sender}|F|RIS|RAD|2026||ADT^A08|N1|P|2.5.1\r{pid}\r"
    ack = handle_frame(message.encode(), "nul:1").decode()
    assert "MSA|AE|N1|" in ack and "NUL" in ack
    entry = InboundMessage.objects.get()
    assert entry.outcome == "AE" and bytes(entry.raw) == message.encode()
