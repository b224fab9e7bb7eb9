"""Inbound HL7 v2 (IHE RAD-1, RAD-2, RAD-12, RAD-13): journal the frame, check the header,
decode by MSH-18, map the message (hl7.mapping), call ris.workflow, answer (hl7.ack).

Journal first, then process, then acknowledge: the raw bytes are committed before anything
else is tried; the message's effects and its journal outcome commit together in one
transaction, and the answer is sent only after that commit. A repeated MSH-10 from the same
sending application and facility gets the answer stored in the journal and changes nothing.
handle_frame never raises: every frame gets an AA, AE or AR.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from hl7 import er7, mapping
from hl7.ack import (
    ERR_DATA_TYPE,
    ERR_DUPLICATE_KEY,
    ERR_INTERNAL,
    ERR_RECORD_LOCKED,
    ERR_REQUIRED_FIELD_MISSING,
    ERR_SEGMENT_SEQUENCE,
    ERR_TABLE_VALUE_NOT_FOUND,
    ERR_UNKNOWN_KEY,
    ERR_UNSUPPORTED_EVENT,
    ERR_UNSUPPORTED_MESSAGE_TYPE,
    ERR_UNSUPPORTED_PROCESSING_ID,
    ERR_UNSUPPORTED_VERSION,
    ORDER_REPLIES,
    HL7Error,
    OrderReply,
    build_ack,
    msh_field,
)
from hl7.mapping import MappingError, OrderItem, PatientRecord
from hl7.models import InboundMessage, ResponseMode, SenderProfile
from hl7.signals import message_journaled
from ris import workflow
from ris.compiled import CompiledQuery
from ris.models import ExamStatus, Patient

log = logging.getLogger(__name__)

# MSH-18 (HL7 table 0211) → Python codec.
CHARSETS = {"ASCII": "ascii", "8859/1": "latin-1", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8"}
PATIENT_EVENTS = frozenset({"A01", "A04", "A05", "A08", "A31"})
MERGE_EVENT = "A40"
ORDER_MESSAGES = {"ORM": "O01", "OMI": "O23"}
# Any v2.3 or later; IHE accepts a higher MSH-12 when the structure conforms.
SUPPORTED_VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"})
PROCESSING_IDS = frozenset({"P", "D", "T"})
# WorkflowError.code → HL7 table 0357.
WORKFLOW_ERRORS = {
    "not_found": ERR_UNKNOWN_KEY,
    "duplicate": ERR_DUPLICATE_KEY,
    "in_progress": ERR_RECORD_LOCKED,
    "illegal_transition": ERR_RECORD_LOCKED,
    "invalid": ERR_DATA_TYPE,
    "permission_denied": ERR_INTERNAL,
}
PROFILE_CACHE_SECONDS = 10.0


class Rejected(Exception):
    def __init__(self, code: str, error: HL7Error) -> None:
        super().__init__(error.text)
        self.code, self.error = code, error


@dataclass
class Header:
    msh: list[str]
    encoding: str
    profile: SenderProfile


# --- entry point ----------------------------------------------------------------------------


def handle_frame(raw: bytes, peer: str) -> bytes:
    """Journal, process and answer one MLLP frame; returns the answer's bytes (never raises).

    The connection's thread keeps its database connection between frames (no reconnect per
    message); after a database error it is dropped so the next frame reconnects."""
    try:
        entry = journal(raw, peer)
    except DatabaseError:
        log.exception("journal unavailable; refusing frame from %s", peer)
        connection.close()
        return _answer_without_journal(raw)
    try:
        return _process(entry, raw, peer)
    except Exception as exc:  # the listener answers every frame; the journal keeps the details
        log.exception("HL7 message from %s failed outside the workflow", peer)
        if isinstance(exc, DatabaseError):
            connection.close()
        ack = build_ack(
            _loose_msh(raw), "AR", HL7Error(ERR_INTERNAL, "internal error; the message was kept, try again")
        )
        with contextlib.suppress(DatabaseError):
            _finish(entry, "AR", ack.encode("latin-1", "replace"), "internal error")
        return ack.encode("latin-1", "replace")


def journal(raw: bytes, peer: str) -> InboundMessage:
    """Store the frame before anything else. On PostgreSQL this commit does not wait for the
    WAL flush (synchronous_commit off): the later commit of the message's effects flushes it
    too, before any ACK leaves, and only a crash of PostgreSQL itself could lose the row of a
    message that was then never acknowledged (so its sender sends it again)."""
    if connection.vendor != "postgresql":
        return InboundMessage.objects.create(peer=peer[:64], raw=raw)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")
        return InboundMessage.objects.create(peer=peer[:64], raw=raw)


def _process(entry: InboundMessage, raw: bytes, peer: str) -> bytes:
    try:
        header = read_header(raw)
    except Rejected as exc:
        ack = build_ack(_loose_msh(raw), exc.code, exc.error).encode("latin-1", "replace")
        _note_header(entry, _loose_msh(raw))
        _finish(entry, exc.code, ack, exc.error.text)
        return ack
    _note_header(entry, header.msh)
    try:
        check_sender(header, peer)
    except Rejected as exc:
        ack = _encode(build_ack(header.msh, exc.code, exc.error), header)
        _finish(entry, exc.code, ack, exc.error.text)
        return ack
    previous = _previous_answer(entry)
    if previous is not None:
        _finish(entry, previous.outcome, bytes(previous.ack), f"repeated MSH-10; answer of journal #{previous.pk} sent")
        return bytes(previous.ack)
    code, error, replies = "AA", None, None
    try:
        message = _decode(raw, header)
        check_message_type(header.msh)
        # The message's effects and its journal outcome commit together, or not at all.
        with workflow.unit_of_work():
            replies = dispatch(message, header, peer)
            ack = _encode(build_ack(header.msh, "AA", None, _replies_for(header, replies)), header)
            _finish(entry, "AA", ack, "")
        return ack
    except Rejected as exc:
        code, error = exc.code, exc.error
    except MappingError as exc:
        code, error = "AE", exc.error
    except OrderRefused as exc:
        code, error, replies = "AE", exc.error, exc.replies
    except IntegrityError as exc:
        # Another connection stored the same key between our check and our insert.
        code, error = "AE", HL7Error(ERR_DUPLICATE_KEY, f"duplicate key: {exc}"[:200], "ORC", 2)
    except DatabaseError as exc:
        # Locked or unreachable database: a receiver-side problem; the sender may resend unchanged.
        log.warning("database error on message from %s: %s", peer, exc)
        connection.close()
        code, error = "AR", HL7Error(ERR_INTERNAL, f"database unavailable ({exc.__class__.__name__}); resend later")
    except Exception as exc:
        log.exception("HL7 message from %s failed", peer)
        code, error = "AE", HL7Error(ERR_INTERNAL, f"internal error: {exc.__class__.__name__}")
    twin = _previous_answer(entry) if code == "AE" else None
    if twin is not None:
        # The same MSH-10 came on another connection at the same moment and was answered first:
        # this copy gets that answer, as a resend would (the refusal was only the race).
        _finish(entry, twin.outcome, bytes(twin.ack), f"repeated MSH-10 at once; answer of journal #{twin.pk} sent")
        return bytes(twin.ack)
    ack = _encode(build_ack(header.msh, code, error, _replies_for(header, replies)), header)
    _finish(entry, code, ack, error.text if error else "")
    return ack


# --- header, charset, duplicates -------------------------------------------------------------


def read_header(raw: bytes) -> Header:
    """MSH read as Latin-1 (every byte decodes), before the charset is known."""
    head = er7.SEGMENT_SEPARATOR.split(raw[:8192].decode("latin-1"), maxsplit=1)[0]
    if not head.startswith("MSH") or len(head) < 8:
        raise Rejected("AR", HL7Error(ERR_SEGMENT_SEQUENCE, "message does not start with an MSH segment", "MSH"))
    try:
        delimiters = er7.read_delimiters(head)
    except er7.ER7Error as exc:
        raise Rejected("AR", HL7Error(ERR_DATA_TYPE, str(exc), "MSH", 2)) from None
    msh = head.split(delimiters.field)  # MSH-n at index n-1 (see ack.msh_field)
    profile = sender_profile(_text(msh_field(msh, 3), 64), _text(msh_field(msh, 4), 64))
    charset = msh_field(msh, 18).split(delimiters.repetition)[0].strip().upper()
    charset = charset or profile.default_charset or settings.RIS_HL7_DEFAULT_CHARSET
    if charset.upper() not in CHARSETS:
        raise Rejected("AR", HL7Error(ERR_TABLE_VALUE_NOT_FOUND, f"unsupported character set {charset!r}", "MSH", 18))
    return Header(msh, CHARSETS[charset.upper()], profile)


def check_sender(header: Header, peer: str) -> None:
    """AR for a sender without a profile (RIS_HL7_KNOWN_SENDERS_ONLY) or sending from an
    address its profile does not allow: the value of MSH-3/4 is not in the RIS's table of senders."""
    profile = header.profile
    sender = f"{msh_field(header.msh, 3)} (facility {msh_field(header.msh, 4) or 'empty'})"
    if profile.pk is None and settings.RIS_HL7_KNOWN_SENDERS_ONLY:
        raise Rejected("AR", HL7Error(ERR_TABLE_VALUE_NOT_FOUND, f"unknown sender {sender}", "MSH", 3))
    address = peer.rsplit(":", 1)[0]
    if not profile.allows_address(address):
        raise Rejected(
            "AR", HL7Error(ERR_TABLE_VALUE_NOT_FOUND, f"sender {sender} is not allowed from {address}", "MSH", 3)
        )


def _loose_msh(raw: bytes) -> list[str]:
    """Whatever MSH fields can be read, to address an AR (MSA-2 = MSH-10 when there is one)."""
    head = raw[:8192].decode("latin-1").replace("\n", "\r").split("\r", 1)[0]
    if head.startswith("MSH") and len(head) > 4:
        return ["MSH", *head[4:].split(head[3])]
    return ["MSH", "^~\\&"]


def _decode(raw: bytes, header: Header) -> er7.Message:
    try:
        text = raw.decode(header.encoding)
    except UnicodeDecodeError as exc:
        charset = msh_field(header.msh, 18) or f"empty, read as {header.encoding}"
        raise Rejected(
            "AE", HL7Error(ERR_DATA_TYPE, f"bytes not valid for MSH-18 ({charset}): {exc.reason}", "MSH", 18)
        ) from None
    if "\x00" in text:
        raise Rejected("AE", HL7Error(ERR_DATA_TYPE, "the message contains NUL (0x00) characters", "MSH"))
    try:
        return er7.Message.parse(text)
    except er7.ER7Error as exc:
        raise Rejected("AR", HL7Error(ERR_SEGMENT_SEQUENCE, str(exc), "MSH")) from None


def check_message_type(msh: list[str]) -> None:
    """AR for what the RIS does not handle: MSH-9 type/event, MSH-11 processing id, MSH-12 version."""
    kind, event = _type_of(msh)
    if kind not in ("ADT", *ORDER_MESSAGES):
        raise Rejected("AR", HL7Error(ERR_UNSUPPORTED_MESSAGE_TYPE, f"unsupported message type {kind!r}", "MSH", 9))
    if (kind == "ADT" and event not in PATIENT_EVENTS | {MERGE_EVENT}) or (
        kind in ORDER_MESSAGES and event != ORDER_MESSAGES[kind]
    ):
        raise Rejected("AR", HL7Error(ERR_UNSUPPORTED_EVENT, f"unsupported event {kind}^{event}", "MSH", 9))
    processing = msh_field(msh, 11).split("^")[0]
    if processing not in PROCESSING_IDS:
        raise Rejected(
            "AR", HL7Error(ERR_UNSUPPORTED_PROCESSING_ID, f"unsupported processing id {processing!r}", "MSH", 11)
        )
    version = msh_field(msh, 12).split("^")[0]
    if version not in SUPPORTED_VERSIONS:
        raise Rejected("AR", HL7Error(ERR_UNSUPPORTED_VERSION, f"unsupported version {version!r}", "MSH", 12))


def _type_of(msh: list[str]) -> tuple[str, str]:
    parts = msh_field(msh, 9).split("^")
    return parts[0].upper(), (parts[1].upper() if len(parts) > 1 else "")


_profiles: dict[tuple[str, str], tuple[float, SenderProfile]] = {}


def forget_sender_profiles() -> None:
    """Drop this process's cached sender profiles (the next message reads them afresh)."""
    _profiles.clear()


def sender_profile(application: str, facility: str) -> SenderProfile:
    """The sender's settings (exact facility first, then any facility), cached briefly."""
    key = (application, facility)
    cached = _profiles.get(key)
    if cached and time.monotonic() - cached[0] < PROFILE_CACHE_SECONDS:
        return cached[1]
    candidates = {
        p.sending_facility: p
        for p in SenderProfile.objects.filter(sending_application=application, sending_facility__in=(facility, ""))
    }
    profile = candidates.get(facility) or candidates.get("") or SenderProfile(sending_application=application)
    _profiles[key] = (time.monotonic(), profile)
    return profile


# Other AA/AE answers to one MSH-10 from one sender, oldest first (run once per message).
_OTHER_ANSWERS = CompiledQuery(
    lambda application, facility, control_id, entry: (
        InboundMessage.objects.filter(
            sending_application=application,
            sending_facility=facility,
            control_id=control_id,
            outcome__in=("AA", "AE"),
        )
        .exclude(pk=entry)
        .only("pk", "ack", "outcome")
        .order_by("pk")[:1]
    ),
    application=str,
    facility=str,
    control_id=str,
    entry=int,
)


def _previous_answer(entry: InboundMessage) -> InboundMessage | None:
    """Another entry's AA/AE answer to the same MSH-10 from the same sender (an AR is not
    remembered: the sender may resend that message unchanged)."""
    if not entry.control_id:
        return None
    return _OTHER_ANSWERS.first(
        application=entry.sending_application,
        facility=entry.sending_facility,
        control_id=entry.control_id,
        entry=entry.pk,
    )


def _text(value: str, limit: int | None = None) -> str:
    """Text fit for any database column: no NUL (PostgreSQL refuses it)."""
    return value.replace("\x00", "\ufffd")[:limit]


def _note_header(entry: InboundMessage, msh: list[str]) -> None:
    entry.sending_application = _text(msh_field(msh, 3), 64)
    entry.sending_facility = _text(msh_field(msh, 4), 64)
    entry.control_id = _text(msh_field(msh, 10), 64)
    entry.message_type = _text(msh_field(msh, 9), 32)


def _finish(entry: InboundMessage, outcome: str, ack: bytes, error: str) -> None:
    entry.outcome, entry.ack, entry.error, entry.processed_at = outcome, ack, _text(error), timezone.now()
    InboundMessage.objects.filter(pk=entry.pk).update(
        sending_application=entry.sending_application,
        sending_facility=entry.sending_facility,
        control_id=entry.control_id,
        message_type=entry.message_type,
        outcome=entry.outcome,
        ack=entry.ack,
        error=entry.error,
        processed_at=entry.processed_at,
    )
    message_journaled.send(InboundMessage, entry=entry)


def _encode(ack: str, header: Header) -> bytes:
    return ack.encode(header.encoding, errors="replace")


def _answer_without_journal(raw: bytes) -> bytes:
    error = HL7Error(ERR_INTERNAL, "journal unavailable; message not accepted, resend later")
    return build_ack(_loose_msh(raw), "AR", error).encode("latin-1", "replace")


def _replies_for(header: Header, replies: list[OrderReply] | None) -> list[OrderReply] | None:
    if header.profile.response != ResponseMode.ORDER_RESPONSE or _type_of(header.msh)[0] not in ORDER_MESSAGES:
        return None
    return replies or []


# --- dispatch to the workflow -----------------------------------------------------------------


class OrderRefused(Exception):
    """An order group the workflow refused; `replies` carries the U* reply for each group."""

    def __init__(self, error: HL7Error, replies: list[OrderReply]) -> None:
        super().__init__(error.text)
        self.error, self.replies = error, replies


def dispatch(message: er7.Message, header: Header, peer: str) -> list[OrderReply] | None:
    kind, event = _type_of(header.msh)
    actor = workflow.Actor.for_hl7(msh_field(header.msh, 3), msh_field(header.msh, 4), peer)
    if kind == "ADT" and event == MERGE_EVENT:
        for merge in mapping.merges_of(message):
            merge_patient(actor, merge)
        return None
    if kind == "ADT":
        register(actor, mapping.patient_from_pid(message.first("PID")), message.first("PID"))
        return None
    return process_orders(actor, message, header)


def register(actor: workflow.Actor, record: PatientRecord, pid: er7.Segment | None) -> Patient:
    """Create or update the patient: fields the message left empty keep their stored value."""
    base = workflow.Demographics()
    # Only a message that leaves some field empty needs the stored values ("keep").
    current = None
    if set(vars(base)) - set(record.demographics):
        current = Patient.objects.filter(patient_id=record.patient_id, issuer=record.issuer).first()
    if current is not None:
        base = workflow.Demographics(**{k: getattr(current, k) for k in vars(base)})
    for name, value in record.demographics.items():
        setattr(base, name, value if value is not None or name == "birth_date" else "")
    try:
        return workflow.register_patient(actor, record.patient_id, record.issuer, base)
    except workflow.WorkflowError as exc:
        raise MappingError(HL7Error(ERR_UNKNOWN_KEY, exc.reason, "PID", 3, component=1)) from exc


def merge_patient(actor: workflow.Actor, merge: mapping.MergeRecord) -> None:
    survivor = register(actor, merge.survivor, None)
    merged = Patient.objects.filter(patient_id=merge.merged_id, issuer=merge.merged_issuer).first()
    if merged is None and not merge.merged_issuer:
        merged = Patient.objects.filter(patient_id=merge.merged_id).first()
    location = ("MRG", 1, merge.mrg_sequence, 1)
    if merged is None:
        raise MappingError(HL7Error(ERR_UNKNOWN_KEY, f"no patient {merge.merged_id} to merge", *location))
    if merged.merged_into_id == survivor.pk:
        return  # already merged: a resend with a new MSH-10 changes nothing
    try:
        workflow.merge_patients(actor, survivor, merged)
    except workflow.WorkflowError as exc:
        raise MappingError(HL7Error(ERR_RECORD_LOCKED, exc.reason, *location)) from exc


def process_orders(actor: workflow.Actor, message: er7.Message, header: Header) -> list[OrderReply]:
    items = mapping.order_items(message, header.profile.protocol_code_components)
    pid = message.first("PID")
    record = mapping.patient_from_pid(pid, required=any(i.control == "NW" for i in items))
    patient = register(actor, record, pid) if record else None
    source = (msh_field(header.msh, 3)[:64], msh_field(header.msh, 4)[:64])
    replies: list[OrderReply] = []
    for item in mapping.merge_for_placement([i for i in items if i.control == "NW"]):
        replies.append(_guarded(item, replies, lambda it=item: place(actor, patient, it, source)))
    for item in (i for i in items if i.control != "NW"):
        replies.append(_guarded(item, replies, lambda it=item: change(actor, it)))
    return replies


def _guarded(item: OrderItem, replies: list[OrderReply], action) -> OrderReply:
    """Run one group's workflow call; a refusal rolls the whole message back (AE) and names the group."""
    accepted, refused = ORDER_REPLIES[item.control]
    try:
        order = action()
    except (workflow.WorkflowError, MappingError) as exc:
        error = exc.error if isinstance(exc, MappingError) else _workflow_error(exc, item)
        reply = OrderReply(refused, item.placer_order_number, item.placer_issuer, item.filler_order_number)
        raise OrderRefused(error, [*replies, reply]) from exc
    return OrderReply(
        accepted, order.placer_order_number, order.placer_issuer, order.filler_order_number, order.filler_issuer
    )


# Where a refused workflow field sits in the order message (ERR location).
WORKFLOW_FIELDS = {
    "placer_order_number": ("ORC", 2),
    "accession_number": ("OBR", 18),
    "study_instance_uid": ("OBR", 18),  # ZDS-1 / IPC-3; OBR-18 names the exam the sender knows
}


def _workflow_error(exc: workflow.WorkflowError, item: OrderItem) -> HL7Error:
    """A workflow refusal as ERR: table 0357 code by WorkflowError.code, located at the field it
    names, else at ORC-1 of the group (the order control that could not be carried out)."""
    code = WORKFLOW_ERRORS.get(exc.code, ERR_INTERNAL)
    segment, field_no = WORKFLOW_FIELDS.get(exc.field, ("ORC", 1))
    sequence = item.orc_sequence if segment == "ORC" else 1
    return HL7Error(code, exc.reason, segment, field_no, sequence)


def place(actor: workflow.Actor, patient: Patient, item: OrderItem, source: tuple[str, str]):
    for proc in item.procedures:
        if not proc.modality:
            raise MappingError(HL7Error(ERR_REQUIRED_FIELD_MISSING, "modality (OBR-24 / IPC-5) is missing", "OBR", 24))
    request = workflow.OrderRequest(
        placer_order_number=item.placer_order_number,
        placer_issuer=item.placer_issuer,
        filler_order_number=item.filler_order_number,
        filler_issuer=item.filler_issuer,
        source_application=source[0],
        source_facility=source[1],
        procedures=item.procedures,
        **item.order_fields,
    )
    return workflow.place_order(actor, patient, request)


def change(actor: workflow.Actor, item: OrderItem):
    """CA, DC, XO and SC on an order the RIS knows."""
    order = workflow.find_order(
        placer_order_number=item.placer_order_number,
        placer_issuer=item.placer_issuer,
        filler_order_number=item.filler_order_number,
        filler_issuer=item.filler_issuer,
    )
    if order is None:
        number = item.placer_order_number or item.filler_order_number
        raise MappingError(HL7Error(ERR_UNKNOWN_KEY, f"unknown order {number}", "ORC", 2, item.orc_sequence))
    exams = _exams_named(order, item)
    if item.control == "XO":
        for proc in item.procedures:
            exam = workflow.find_exam_of_order(
                order, accession_number=proc.accession_number, requested_procedure_id=proc.requested_procedure_id
            )
            if exam is None:
                raise MappingError(HL7Error(ERR_UNKNOWN_KEY, "no such exam in this order", "OBR", 18))
            workflow.change_exam(actor, exam, _exam_change(item, proc))
        return order
    target = {"CA": "CA", "DC": "DC"}.get(item.control) or {"CA": "CA", "DC": "DC"}.get(item.order_status)
    for exam in exams:
        if target == "CA" and exam.status != ExamStatus.CANCELLED:
            workflow.cancel_exam(actor, exam, reason=f"HL7 {item.control}")
        elif target == "DC" and exam.status not in (ExamStatus.DISCONTINUED, ExamStatus.CANCELLED):
            workflow.discontinue_exam(actor, exam, reason=f"HL7 {item.control}")
        elif target is None:
            workflow.record_placer_status(actor, exam, item.order_status)
    return order


def _exams_named(order, item: OrderItem) -> list:
    """The exams a CA/DC/SC names: those whose accession the OBR/IPC carries, else all of the order."""
    accessions = {p.accession_number for p in item.procedures if p.accession_number}
    exams = list(order.requested_procedures.order_by("pk"))
    if accessions:
        exams = [e for e in exams if e.accession_number in accessions]
        if not exams:
            raise MappingError(HL7Error(ERR_UNKNOWN_KEY, "no exam with this accession number", "OBR", 18))
    return exams


def _exam_change(item: OrderItem, proc) -> workflow.ExamChange:
    """XO is a snapshot of the order: what it carries replaces what is stored; the station
    changes only when named (ORC-18 / IPC-9) or when the modality changes (station rules)."""
    step = proc.steps[0]
    return workflow.ExamChange(
        start=step.start if item.has_start else None,
        modality=proc.modality if item.has_modality else None,
        station_ae_title=step.station_ae_title if item.explicit_station else None,
        station_name=step.station_name or None,
        location=step.location or None,
        procedure_code=proc.procedure_code if item.has_procedure else None,
        procedure_code_scheme=proc.procedure_code_scheme if item.has_procedure else None,
        procedure_description=proc.procedure_description if item.has_procedure else None,
        protocol_codes=step.protocol_codes if item.has_procedure else None,
        order_fields={k: v for k, v in item.order_fields.items() if k in workflow.ORDER_CHANGEABLE_FIELDS},
    )


def journal_unanswered(data: bytes, peer: str, reason: str) -> None:
    """Journal bytes that got no answer (outside a frame, a cut-off or oversized frame)."""
    if not data:
        return
    try:
        with transaction.atomic():
            entry = InboundMessage.objects.create(peer=peer[:64], raw=data, error=reason, processed_at=timezone.now())
            message_journaled.send(InboundMessage, entry=entry)
    except DatabaseError:
        log.exception("could not journal %d bytes from %s (%s)", len(data), peer, reason)
