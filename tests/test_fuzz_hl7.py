"""Fuzzing the live MLLP listener (issue 9). tests/test_hl7_units.py already fuzzes the message
handler in-process (arbitrary bytes, mutations of real messages); here hypothesis generates
whole frames — segments, fields, HL7 escapes, MSH-18 character sets and encodings, plus
mutations of the real messages in tests/data/hl7 — and sends them over real sockets to
`manage.py runmllp`. Every frame must get one ACK with MSA AA/AE/AR on the same connection,
and a valid order afterwards must still be accepted.

CI sends HL7_LIVE_FUZZ_FRAMES (default 1000); `make fuzz` sends 10 000."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_hl7_inbound import Peer, msa, orm, send

pytestmark = pytest.mark.live

FRAMES = int(os.environ.get("HL7_LIVE_FUZZ_FRAMES", "10000" if os.environ.get("FUZZ_FULL") == "1" else "1000"))
BATCH = 50  # frames per connection (one hypothesis example)
REAL_MESSAGES = [p.read_bytes() for p in sorted((Path(__file__).parent / "data" / "hl7").glob("*.hl7"))]
FRAMING = (b"\x0b", b"\x1c")  # inside a message they would end it: framing is fuzzed in test_hl7_units

ESCAPES = [
    "\\F\\",
    "\\S\\",
    "\\T\\",
    "\\R\\",
    "\\E\\",
    "\\X0D0A\\",
    "\\H\\",
    "\\N\\",
    "\\Zxy\\",
    "\\X\\",
    "\\",
    "\\.br\\",
]
CHARSETS = ["", "ASCII", "8859/1", "UNICODE UTF-8", "UNICODE", "ISO IR87", "GB 18030-2000", "NONSENSE"]
ENCODINGS = ["utf-8", "latin-1", "utf-16-le", "cp1252", "shift_jis"]
TYPES = ["ORM^O01", "OMI^O23", "ADT^A01", "ADT^A08", "ADT^A40", "ORU^R01", "QRY^A19", "ORM", "^", "", "ORM^O01^ORM_O01"]
VERSIONS = ["2.3.1", "2.5", "2.5.1", "2.9", "", "3"]
SEGMENTS = ["PID", "PV1", "ORC", "OBR", "ZDS", "NTE", "EVN", "MRG", "OBX", "MSH", "ZZZ", "pid", "P"]

field_text = st.lists(
    st.one_of(st.sampled_from(ESCAPES), st.text(max_size=12), st.sampled_from(["^", "~", "&", "|", '""', "Nguyễn"])),
    max_size=6,
).map("".join)


@st.composite
def structured_message(draw) -> bytes:
    msh = [
        "MSH",
        draw(st.sampled_from(["^~\\&", "^~\\", "", "^^^^", "#~\\&"])),
        draw(field_text),
        "HOSP",
        "RIS",
        "RAD",
        draw(st.sampled_from(["20261126101500", "", "2026", "not a date", "20261399"])),
        "",
        draw(st.sampled_from(TYPES)),
        draw(st.text(max_size=25)),
        draw(st.sampled_from(["P", "T", "", "X"])),
        draw(st.sampled_from(VERSIONS)),
        *([""] * 5),
        draw(st.sampled_from(CHARSETS)),
    ]
    segments = ["|".join(msh)]
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(SEGMENTS))
        segments.append("|".join([name, *draw(st.lists(field_text, max_size=25))]))
    text = draw(st.sampled_from(["\r", "\n", "\r\n"])).join(segments)
    return text.encode(draw(st.sampled_from(ENCODINGS)), errors="replace")


@st.composite
def mutated_message(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(REAL_MESSAGES)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.integers(0, 2))
        if kind == 0:
            data[at:at] = draw(st.binary(max_size=8))
        elif kind == 1:
            del data[at : at + draw(st.integers(1, 40))]
        else:
            data[at:at] = draw(st.sampled_from([b"|", b"^", b"\\", b"\r", b"\\X00\\", b"\xff\xfe", b"\x00"]))
    return bytes(data)


def without_framing(data: bytes) -> bytes:
    for byte in FRAMING:
        data = data.replace(byte, b"")
    return data or b"MSH"


frames = st.one_of(structured_message(), mutated_message(), st.binary(min_size=1, max_size=300)).map(without_framing)


@pytest.mark.django_db(transaction=True)
@settings(
    max_examples=max(1, FRAMES // BATCH),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(frames, min_size=BATCH, max_size=BATCH))
def test_every_generated_frame_gets_one_ack_on_the_same_connection(shared_mllp_listener, batch):
    peer = Peer(shared_mllp_listener)
    try:
        for frame in batch:
            ack = peer.send(frame).decode("latin-1")
            assert msa(ack)[1] in ("AA", "AE", "AR"), ack
    finally:
        peer.close()


def test_listener_still_accepts_a_valid_order_after_the_fuzzing(shared_mllp_listener, transactional_db):
    ack = send(shared_mllp_listener, orm(msg_id="AFTER-FUZZ", placer="PLFUZZ", accession="ACCFUZZ"))
    assert msa(ack)[1:3] == ["AA", "AFTER-FUZZ"]
