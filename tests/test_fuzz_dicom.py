"""Fuzzing the live DICOM SCP (issue 9): malformed PDUs over raw sockets (truncated, bit-flipped
A-ASSOCIATE-RQ, garbage P-DATA after an accepted association), malformed DIMSE requests through
pynetdicom (identifiers with wrong VRs and bad values) and hand-built DIMSE requests whose SOP
class or operation does not belong to the presentation context they come on. Every request must
be answered or the connection cleanly closed within a few seconds, `rundicom` must still run,
and a C-ECHO afterwards must succeed.

CI sends about 250; `make fuzz` (FUZZ_FULL=1) sends 1,500."""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_primitives import (
    C_ECHO,
    C_FIND,
    C_STORE,
    N_ACTION,
    N_CREATE,
    N_DELETE,
    N_EVENT_REPORT,
    N_GET,
    N_SET,
)
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    Verification,
)

from tests.test_mpps_scp import register_station

pytestmark = pytest.mark.live

FULL = os.environ.get("FUZZ_FULL") == "1"
RAW_CASES = 1000 if FULL else 150
DIMSE_CASES = 200 if FULL else 40
WRONG_SOP_CASES = 300 if FULL else 40  # hand-built requests on the wrong presentation context
ANSWER_SECONDS = 10.0
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_rq(calling: str = "CT1", called: str = "RIS", abstract: str = Verification) -> bytes:
    """A well-formed A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing one presentation context."""
    context = struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x30, abstract.encode()) + _item(0x40, IMPLICIT_VR_LE.encode())
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.9.9")
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + bytes(32)
        + _item(0x10, APPLICATION_CONTEXT.encode())
        + _item(0x20, context)
        + _item(0x50, user)
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def p_data(payload: bytes, context_id: int = 1, control: int = 0x03) -> bytes:
    """A P-DATA-TF PDU with one PDV (control 0x03: last fragment of a command)."""
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def exchange(port: int, *chunks: bytes, wait_for_ac: bool = False) -> str:
    """Send `chunks` (after an A-ASSOCIATE-AC if wait_for_ac), half-close, and read until the SCP
    answers and closes. Returns "answered", "closed" or raises if it hangs."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_SECONDS) as sock:
        if wait_for_ac:
            sock.sendall(chunks[0])
            first = sock.recv(10)
            if first[:1] == b"\x03":  # A-ASSOCIATE-RJ: every association slot is taken
                return "busy"
            assert first[:1] == b"\x02", f"valid A-ASSOCIATE-RQ not answered: {first!r}"
            length = struct.unpack(">I", first[2:6])[0] - 4
            while length > 0:
                length -= len(sock.recv(length))
            chunks = chunks[1:]
        try:
            for chunk in chunks:
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return "closed"
        got = b""
        deadline = time.monotonic() + ANSWER_SECONDS
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return "closed"
            except TimeoutError:
                break
            if not data:
                return "answered" if got else "closed"
            got += data
        raise AssertionError(f"SCP neither answered nor closed within {ANSWER_SECONDS} s ({got[:20]!r})")


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:  # truncated
        return bytes(data[: rng.randrange(1, len(data))])
    if kind == 1:  # flipped bytes
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 2:  # a lying length field
        data[2:6] = struct.pack(">I", rng.choice([0, 1, len(data) * 3, 0xFFFFFFFF]))
        return bytes(data)
    return bytes(rng.randbytes(rng.randint(1, 300)))  # noise


@pytest.fixture
def scp(dicom_scp, ris_env):
    register_station("CT1")
    return dicom_scp[1]


def scp_is_healthy(port: int, within: float = 45.0) -> bool:
    """A C-ECHO succeeds (retried for a while: an association still being torn down holds a slot)."""
    deadline = time.monotonic() + within
    while not echo(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def echo(port: int) -> bool:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="RIS")
    try:
        return assoc.is_established and assoc.send_c_echo().Status == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()


def test_malformed_pdus_are_answered_or_closed_and_the_scp_stays_up(scp, dicom_scp):
    rng = random.Random(9)
    outcomes = {"answered": 0, "closed": 0, "busy": 0}
    valid = associate_rq()
    for n in range(RAW_CASES):
        if n % 3 == 2:  # an accepted association, then a malformed command
            command = mutate(rng, bytes(rng.randbytes(rng.randint(0, 200))) or b"\x00")
            outcomes[exchange(scp, valid, p_data(command, rng.choice([1, 3, 255])), wait_for_ac=True)] += 1
        else:
            outcomes[exchange(scp, mutate(rng, valid))] += 1
    # "busy" would be a valid association refused A-ASSOCIATE-RJ local-limit-exceeded because
    # malformed ones still held their slots (see the burst test below).
    assert outcomes == {**outcomes, "busy": 0} and sum(outcomes.values()) == RAW_CASES, outcomes
    assert scp_is_healthy(scp)


def _bad_identifier(rng: random.Random) -> Dataset:
    """An MWL identifier with a wrong VR, a bad value, or an over-long/illegal string."""
    ds = Dataset()
    ds.PatientName = "*"
    step = Dataset()
    choice = rng.randrange(6)
    if choice == 0:
        ds.add(DataElement(0x00100010, "US", rng.randrange(65535)))  # PatientName as US
    elif choice == 1:
        step.ScheduledProcedureStepStartDate = rng.choice(["2026-13-45", "abcdefgh", "20261301-", "-" * 40])
    elif choice == 2:
        ds.PatientID = "X" * rng.choice([65, 1000, 20000])
    elif choice == 3:
        ds.StudyInstanceUID = rng.choice(["not.a.uid", "1." * 40, "\\".join(["1.2"] * 50), "é"])
    elif choice == 4:
        step.add(DataElement(0x00400001, "OB", rng.randbytes(rng.randint(1, 64))))  # AE title as OB
    else:
        ds.add(DataElement(0x00400100, "SQ", [Dataset(), Dataset()]))  # two items where one is allowed
        return ds
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def test_bad_identifiers_and_wrong_sop_classes_get_failure_statuses_not_crashes(scp, dicom_scp):
    rng = random.Random(99)
    answered = 0
    for n in range(DIMSE_CASES):
        ae = AE(ae_title="CT1")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ANSWER_SECONDS
        for context in (ModalityWorklistInformationFind, ModalityPerformedProcedureStep, CTImageStorage):
            ae.add_requested_context(context)
        assoc = ae.associate("127.0.0.1", scp, ae_title="RIS")
        assert assoc.is_established
        try:
            kind = n % 3
            if kind == 0:
                statuses = [s for s, _ in assoc.send_c_find(_bad_identifier(rng), ModalityWorklistInformationFind)]
                answered += bool(statuses) and all(s is not None and "Status" in s for s in statuses)
            elif kind == 1:  # an image with bad identifiers (UIDs, wrong VR)
                ds = Dataset()
                ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, rng.choice([generate_uid(), "1.2.x", "1.02.3"])
                ds.StudyInstanceUID = rng.choice([generate_uid(), "bad uid", ""])
                ds.add(DataElement(0x00080050, *rng.choice([("US", 7), ("SH", "A" * 40)])))  # Accession as US
                ds.file_meta = FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
                status = assoc.send_c_store(ds)
                answered += status is not None and "Status" in status
            else:  # N-SET of an MPPS that does not exist, with garbage attributes
                ds = Dataset()
                ds.add(DataElement(0x00400252, "CS", rng.choice(["", "WHATEVER", "x" * 100])))
                status, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, generate_uid())
                answered += status is not None and "Status" in status and status.Status != 0x0000
        finally:
            if assoc.is_established:
                assoc.release()
    assert answered == DIMSE_CASES
    assert scp_is_healthy(scp)


def test_association_proposing_only_unsupported_sop_classes_is_answered_or_closed(scp):
    rq = associate_rq(abstract="1.2.3.4.5.6.7.8.9")  # no such SOP class
    assert exchange(scp, rq) in ("answered", "closed")
    assert scp_is_healthy(scp)


def test_command_without_a_command_field_is_aborted_at_once(scp):
    """Regression (found by the fuzzer): pynetdicom 3.0.4 raised inside its reactor thread on a
    command set without (0000,0100) CommandField, leaving the association hanging for 300 s."""
    command = struct.pack("<HHI", 0x0000, 0x0002, 4) + b"1.2\x00"  # Affected SOP Class UID only
    with socket.create_connection(("127.0.0.1", scp), timeout=ANSWER_SECONDS) as sock:
        sock.sendall(associate_rq())
        assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC
        sock.recv(65536)
        sock.sendall(p_data(command))
        reply = sock.recv(65536)
        while reply and reply[:1] != b"\x07":
            reply = sock.recv(65536)
    assert reply[:1] == b"\x07"  # A-ABORT, within ANSWER_SECONDS


# --- DIMSE requests on the wrong presentation context (hand-built: pynetdicom's SCU refuses) ---
# PS3.7: a C-service whose SOP class is not the context's abstract syntax, or that the SOP class
# does not offer, is refused 0x0122 (SOP Class not supported); an N-service 0x0212 (Mistyped
# argument) when its SOP class was negotiated on another context, 0x0118 (No such SOP Class) when
# it was not negotiated at all, and 0x0211 (Unrecognized operation) when the context's own SOP
# class has no such operation. Each with an Error Comment. A context ID that was never
# accepted is an A-ABORT (PS3.8 7.1.2.3 leaves it to the provider). Never a crash or a hang.
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"  # supported by the SCP, not proposed by this SCU
UNKNOWN_CLASS = "1.2.826.0.1.3680043.9.9999.1"
N_FAILURES = (0x0118, 0x0211, 0x0212)


def _encoded(ds: Dataset) -> BytesIO:
    return BytesIO(encode(ds, True, True))


def _request(kind: str, sop_class: str) -> object:
    """A DIMSE request primitive of `kind` naming `sop_class`, with a small valid data set."""
    ds = Dataset()
    ds.PatientName = "*"
    primitive = _PRIMITIVES[kind]()
    primitive.MessageID = random.randrange(1, 65535)
    if kind in ("C-FIND", "C-STORE", "C-ECHO", "N-CREATE", "N-EVENT-REPORT"):
        primitive.AffectedSOPClassUID = sop_class
    else:
        primitive.RequestedSOPClassUID = sop_class
        primitive.RequestedSOPInstanceUID = generate_uid()
    if kind in ("C-FIND", "C-STORE"):
        primitive.Priority = 2
    if kind == "C-FIND":
        primitive.Identifier = _encoded(ds)
    elif kind == "C-STORE":
        primitive.AffectedSOPInstanceUID = generate_uid()
        primitive.DataSet = _encoded(ds)
    elif kind == "N-CREATE":
        primitive.AffectedSOPInstanceUID = generate_uid()
        primitive.AttributeList = _encoded(ds)
    elif kind == "N-SET":
        primitive.ModificationList = _encoded(ds)
    elif kind == "N-ACTION":
        primitive.ActionTypeID = 1
    elif kind == "N-EVENT-REPORT":
        primitive.AffectedSOPInstanceUID = generate_uid()
        primitive.EventTypeID = 1
    return primitive


_PRIMITIVES = {
    "C-ECHO": C_ECHO,
    "C-FIND": C_FIND,
    "C-STORE": C_STORE,
    "N-CREATE": N_CREATE,
    "N-SET": N_SET,
    "N-GET": N_GET,
    "N-ACTION": N_ACTION,
    "N-DELETE": N_DELETE,
    "N-EVENT-REPORT": N_EVENT_REPORT,
}
CONTEXTS = (Verification, ModalityWorklistInformationFind, ModalityPerformedProcedureStep, CTImageStorage)


def _associate(port: int):
    ae = AE(ae_title="CT1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ANSWER_SECONDS
    for context in CONTEXTS:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title="RIS")
    assert assoc.is_established
    return assoc


def _context_id(assoc, abstract_syntax: str) -> int:
    return next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == abstract_syntax)


def send_raw(assoc, request, context_id: int):
    """Send a hand-built request on `context_id`; its response primitive, or "aborted"."""
    assoc._reactor_checkpoint.clear()  # as pynetdicom's send_*() do: the SCU's reactor keeps off
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context_id)
        deadline = time.monotonic() + ANSWER_SECONDS
        while time.monotonic() < deadline:
            _, response = assoc.dimse.get_msg(block=False)
            if response is not None:
                return response
            if assoc.acse.is_aborted() or not assoc.dul.is_alive():
                return "aborted"
            time.sleep(0.005)
    finally:
        assoc._reactor_checkpoint.set()
    raise AssertionError(f"no answer to {type(request).__name__} on context {context_id} within {ANSWER_SECONDS} s")


def still_serves(assoc) -> None:
    """C-ECHO and a normal MWL C-FIND on this association still work."""
    assert assoc.send_c_echo().Status == 0x0000
    query = Dataset()
    query.PatientName = "*"
    query.ScheduledProcedureStepSequence = [Dataset()]
    statuses = [status.Status for status, _ in assoc.send_c_find(query, ModalityWorklistInformationFind)]
    assert statuses[-1] == 0x0000, [hex(s) for s in statuses]


@pytest.mark.parametrize(
    ("context", "kind", "sop_class", "expected"),
    [
        (ModalityWorklistInformationFind, "C-FIND", ModalityPerformedProcedureStep, 0x0122),
        (ModalityWorklistInformationFind, "C-FIND", CTImageStorage, 0x0122),
        (ModalityWorklistInformationFind, "C-FIND", UNKNOWN_CLASS, 0x0122),
        (ModalityWorklistInformationFind, "N-CREATE", ModalityPerformedProcedureStep, 0x0212),
        (ModalityWorklistInformationFind, "N-CREATE", ModalityWorklistInformationFind, 0x0211),
        (ModalityWorklistInformationFind, "C-STORE", MR_IMAGE, 0x0122),
        (ModalityWorklistInformationFind, "C-STORE", ModalityWorklistInformationFind, 0x0122),
        (CTImageStorage, "C-STORE", MR_IMAGE, 0x0122),
        (CTImageStorage, "C-FIND", ModalityWorklistInformationFind, 0x0122),
        (CTImageStorage, "N-SET", ModalityPerformedProcedureStep, 0x0212),
        (ModalityPerformedProcedureStep, "N-SET", CTImageStorage, 0x0212),
        (ModalityPerformedProcedureStep, "N-SET", UNKNOWN_CLASS, 0x0118),
        (ModalityPerformedProcedureStep, "N-CREATE", MR_IMAGE, 0x0118),
        (ModalityPerformedProcedureStep, "N-CREATE", CTImageStorage, 0x0212),
        (ModalityPerformedProcedureStep, "C-FIND", ModalityPerformedProcedureStep, 0x0122),
        (ModalityPerformedProcedureStep, "N-GET", ModalityPerformedProcedureStep, 0x0211),
        (ModalityPerformedProcedureStep, "N-DELETE", ModalityPerformedProcedureStep, 0x0211),
        (ModalityPerformedProcedureStep, "N-ACTION", ModalityPerformedProcedureStep, 0x0211),
        (ModalityPerformedProcedureStep, "N-EVENT-REPORT", ModalityPerformedProcedureStep, 0x0211),
        (Verification, "C-ECHO", ModalityWorklistInformationFind, 0x0122),
        (Verification, "N-CREATE", Verification, 0x0211),
    ],
    ids=lambda v: getattr(v, "keyword", None) or (hex(v) if isinstance(v, int) else str(v)),
)
def test_request_on_the_wrong_context_is_refused_with_the_standard_status(scp, context, kind, sop_class, expected):
    assoc = _associate(scp)
    try:
        response = send_raw(assoc, _request(kind, sop_class), _context_id(assoc, context))
        assert response != "aborted"
        assert type(response) is _PRIMITIVES[kind]
        assert (hex(response.Status), bool(response.ErrorComment)) == (hex(expected), True)
        still_serves(assoc)
    finally:
        if assoc.is_established:
            assoc.release()


@pytest.mark.parametrize(
    ("kind", "sop_class", "missing"),
    [
        ("N-SET", ModalityPerformedProcedureStep, "RequestedSOPInstanceUID"),
        ("N-CREATE", ModalityPerformedProcedureStep, "AffectedSOPClassUID"),
        ("C-STORE", CTImageStorage, "AffectedSOPInstanceUID"),
    ],
)
def test_request_without_a_mandatory_command_element_is_aborted_not_left_waiting(scp, kind, sop_class, missing):
    assoc = _associate(scp)
    request = _request(kind, sop_class)
    setattr(request, missing, None)
    assert send_raw(assoc, request, _context_id(assoc, sop_class)) == "aborted"
    assert scp_is_healthy(scp, within=15)


def test_request_on_a_context_never_accepted_is_aborted(scp):
    assoc = _associate(scp)
    assert send_raw(assoc, _request("C-ECHO", Verification), 99) == "aborted"
    assert scp_is_healthy(scp, within=15)


def test_wrong_sop_classes_fuzzed_are_refused_or_aborted_and_the_scp_keeps_serving(scp):
    rng = random.Random(122)
    classes = [*CONTEXTS, MR_IMAGE, UNKNOWN_CLASS, "1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.1.20.1"]
    outcomes = {"refused": 0, "aborted": 0}
    assoc = _associate(scp)
    while sum(outcomes.values()) < WRONG_SOP_CASES:
        context, kind, sop_class = rng.choice(CONTEXTS), rng.choice(list(_PRIMITIVES)), rng.choice(classes)
        if _serves(context, kind, sop_class):
            continue  # a legitimate request: covered by the service tests
        request, broken = _request(kind, sop_class), rng.random() < 0.1
        if broken:  # a mandatory UID left out
            setattr(request, rng.choice([k for k in request.REQUEST_KEYWORDS if "UID" in k]), None)
        context_id = _context_id(assoc, context) if rng.random() > 0.05 else rng.choice([0, 2, 255])
        response = send_raw(assoc, request, context_id)
        if response == "aborted":
            outcomes["aborted"] += 1
            assoc = _associate(scp)
            continue
        assert not broken, (kind, request.REQUEST_KEYWORDS)
        failures = N_FAILURES if kind.startswith("N-") else (0x0122,)
        assert (response.Status in failures, bool(response.ErrorComment)) == (True, True), (kind, sop_class, context)
        outcomes["refused"] += 1
    try:
        still_serves(assoc)
    finally:
        assoc.release()
    assert outcomes["refused"] > outcomes["aborted"], outcomes
    assert scp_is_healthy(scp, within=15)


def _serves(context: str, kind: str, sop_class: str) -> bool:
    offered = {
        Verification: ("C-ECHO",),
        ModalityWorklistInformationFind: ("C-FIND",),
        ModalityPerformedProcedureStep: ("N-CREATE", "N-SET"),
        CTImageStorage: ("C-STORE",),
    }
    return sop_class == context and kind in offered[context]


# --- association slots under a burst of malformed connections (issue 9) ---
MALFORMED_BURST = 200


def echo_outcome(port: int) -> str:
    """ "ok", or why a C-ECHO from CT1 failed (an A-ASSOCIATE-RJ's result, source, reason)."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="RIS")
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return f"rejected {rj.result}/{rj.result_source}/{rj.diagnostic}"
    if not assoc.is_established:
        return "aborted or closed"
    try:
        return "ok" if assoc.send_c_echo().Status == 0x0000 else "failed"
    finally:
        assoc.release()


def malformed_connection(port: int, seed: int) -> str:
    rng = random.Random(seed)
    if seed % 4 == 3:  # an accepted association, then a malformed command
        command = mutate(rng, bytes(rng.randbytes(rng.randint(0, 200))) or b"\x00")
        return exchange(port, associate_rq(), p_data(command, rng.choice([1, 3, 255])), wait_for_ac=True)
    return exchange(port, mutate(rng, associate_rq()))


def test_valid_association_amid_a_burst_of_malformed_connections_is_not_refused_for_slots(scp):
    """Each malformed connection must free its association slot when it ends, not when the ARTIM
    timer (acse_timeout) expires: else a burst fills maximum_associations and a modality's valid
    association is refused A-ASSOCIATE-RJ "local limit exceeded" (transient, 2/3/2)."""
    echoes = []
    with ThreadPoolExecutor(8) as pool:  # eight malformed peers at once, while CT1 echoes
        burst = [pool.submit(malformed_connection, scp, seed) for seed in range(MALFORMED_BURST)]
        while not all(f.done() for f in burst) or len(echoes) < 3:
            echoes.append(echo_outcome(scp))
        outcomes = [f.result() for f in burst]  # re-raises a connection left hanging
    echoes.append(echo_outcome(scp))
    assert "busy" not in outcomes
    assert echoes == ["ok"] * len(echoes)


def test_a_connection_that_never_sends_a_request_is_closed_after_the_artim_timeout(scp):
    """A silent or half-sent connection holds a slot only for the SCP's ARTIM timeout (10 s)."""
    with socket.create_connection(("127.0.0.1", scp), timeout=20) as sock:
        sock.sendall(associate_rq()[:30])  # half an A-ASSOCIATE-RQ, and then nothing
        started = time.monotonic()
        while sock.recv(65536):  # an A-ABORT perhaps, then the close
            pass
        assert 8 < time.monotonic() - started < 15
