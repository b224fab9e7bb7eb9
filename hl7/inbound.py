"""Inbound HL7 v2: journal the frame, route it by MSH-9, call the workflow, answer.

Journal first, then process, then acknowledge: the raw bytes are committed before anything
else is tried, and the ACK is built only after the workflow call committed (or failed).
"""

from __future__ import annotations

import datetime as dt
import logging
import re

from django.db import close_old_connections, transaction
from django.utils import timezone
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from hl7.ack import (
    ERR_DATA_TYPE,
    ERR_INTERNAL,
    ERR_REQUIRED_FIELD_MISSING,
    ERR_SEGMENT_SEQUENCE,
    ERR_UNSUPPORTED_EVENT,
    ERR_UNSUPPORTED_MESSAGE_TYPE,
    HL7Error,
    build_ack,
    msh_field,
)
from hl7.models import InboundMessage
from ris import workflow

log = logging.getLogger(__name__)

# MSH-18 → Python codec. Empty MSH-18 means ASCII; senders that lie get a decoding error answer.
CHARSETS = {"": "ascii", "ASCII": "ascii", "8859/1": "latin-1", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8"}
PATIENT_EVENTS = {"A01", "A04", "A05", "A08", "A31"}
ESCAPES = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\", ".br": "\n"}
SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")


class Rejected(Exception):
    def __init__(self, code: str, error: HL7Error) -> None:
        super().__init__(error.text)
        self.code, self.error = code, error


def unescape(value: str) -> str:
    """Undo HL7 escapes: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\.br\\ and \\Xhh..\\."""

    def replace(match: re.Match) -> str:
        body = match.group(1)
        if body in ESCAPES:
            return ESCAPES[body]
        if body.startswith("X") and len(body) > 1:
            try:
                return bytes.fromhex(body[1:]).decode("latin-1")
            except ValueError:
                return match.group(0)
        return match.group(0)

    return re.sub(r"\\([^\\]*)\\", replace, value)


def handle_frame(raw: bytes, peer: str) -> bytes:
    """Process one MLLP frame and return the acknowledgment's bytes (never raises)."""
    close_old_connections()
    entry = InboundMessage.objects.create(peer=peer, raw=raw)
    ack, outcome, error_text = _process(entry, raw, peer)
    InboundMessage.objects.filter(pk=entry.pk).update(
        sending_application=entry.sending_application,
        sending_facility=entry.sending_facility,
        control_id=entry.control_id,
        message_type=entry.message_type,
        outcome=outcome,
        ack=ack,
        error=error_text,
        processed_at=timezone.now(),
    )
    return ack


def _process(entry: InboundMessage, raw: bytes, peer: str) -> tuple[bytes, str, str]:
    msh: list[str] = []
    encoding = "ascii"
    try:
        msh, encoding = _read_header(raw)
        entry.sending_application = msh_field(msh, 3)[:64]
        entry.sending_facility = msh_field(msh, 4)[:64]
        entry.control_id = msh_field(msh, 10)[:64]
        entry.message_type = msh_field(msh, 9)[:32]
        previous = _previous_answer(entry)
        if previous is not None:
            return bytes(previous.ack), previous.outcome, "repeated MSH-10: original answer sent again"
        _dispatch(raw.decode(encoding), msh, peer)
        code, error = "AA", None
    except Rejected as exc:
        code, error = exc.code, exc.error
    except UnicodeDecodeError as exc:
        code, error = (
            "AE",
            HL7Error(ERR_DATA_TYPE, f"message is not valid {encoding} (MSH-18): {exc.reason}", "MSH", 18),
        )
    except Exception as exc:  # the listener answers every frame; the journal keeps the details
        log.exception("HL7 message from %s failed", peer)
        code, error = "AE", HL7Error(ERR_INTERNAL, f"internal error: {exc.__class__.__name__}")
    ack = build_ack(msh or ["MSH", "^~\\&"], code, error).encode(encoding, errors="replace")
    return ack, code, error.text if error else ""


def _read_header(raw: bytes) -> tuple[list[str], str]:
    head = SEGMENT_SPLIT.split(raw[:4096].decode("latin-1"), maxsplit=1)[0]
    if not head.startswith("MSH") or len(head) < 8:
        raise Rejected("AR", HL7Error(ERR_SEGMENT_SEQUENCE, "message does not start with an MSH segment", "MSH"))
    msh = head.split(head[3])
    charset = msh_field(msh, 18).split("~")[0].strip().upper()
    if charset not in CHARSETS:
        raise Rejected("AR", HL7Error(ERR_DATA_TYPE, f"unsupported character set {charset!r}", "MSH", 18))
    return msh, CHARSETS[charset]


def _previous_answer(entry: InboundMessage) -> InboundMessage | None:
    if not entry.control_id:
        return None
    return (
        InboundMessage.objects.filter(
            sending_application=entry.sending_application,
            sending_facility=entry.sending_facility,
            control_id=entry.control_id,
            outcome__in=("AA", "AE"),
        )
        .exclude(pk=entry.pk)
        .order_by("pk")
        .first()
    )


def _dispatch(text: str, msh: list[str], peer: str) -> None:
    msg_type = msh_field(msh, 9).split("^")
    kind, event = msg_type[0], (msg_type[1] if len(msg_type) > 1 else "")
    actor = workflow.Actor.for_hl7(msh_field(msh, 3), msh_field(msh, 4), peer)
    if kind == "ADT" and event in PATIENT_EVENTS:
        _register_patient(actor, text)
        return
    if kind == "ADT":
        raise Rejected("AR", HL7Error(ERR_UNSUPPORTED_EVENT, f"unsupported event {kind}^{event}", "MSH", 9))
    raise Rejected("AR", HL7Error(ERR_UNSUPPORTED_MESSAGE_TYPE, f"unsupported message type {kind}", "MSH", 9))


def _register_patient(actor: workflow.Actor, text: str) -> None:
    message = parse_message(
        SEGMENT_SPLIT.sub("\r", text).strip("\r"), validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False
    )
    pid = message.pid
    ids = pid.pid_3.to_er7().split("~")[0].split("^") if pid.pid_3 else [""]
    patient_id = unescape(ids[0])
    issuer = unescape(ids[3].split("&")[0]) if len(ids) > 3 else ""
    if not patient_id:
        raise Rejected("AE", HL7Error(ERR_REQUIRED_FIELD_MISSING, "patient identifier (PID-3) is missing", "PID", 3))
    name = [unescape(p) for p in (pid.pid_5.to_er7().split("~")[0].split("^") if pid.pid_5 else [])] + [""] * 6
    birth = pid.pid_7.to_er7()[:8] if pid.pid_7 else ""
    try:
        birth_date = dt.datetime.strptime(birth, "%Y%m%d").date() if birth else None
    except ValueError:
        raise Rejected("AE", HL7Error(ERR_DATA_TYPE, f"birth date {birth!r} is not YYYYMMDD", "PID", 7)) from None
    sex = pid.pid_8.to_er7() if pid.pid_8 else ""
    demographics = workflow.Demographics(
        family_name=name[0],
        given_name=name[1],
        middle_name=name[2],
        name_suffix=name[3],
        name_prefix=name[4],
        birth_date=birth_date,
        sex=sex if sex in ("M", "F", "O") else ("O" if sex in ("A", "N") else ""),
    )
    with transaction.atomic():
        try:
            workflow.register_patient(actor, patient_id, issuer, demographics)
        except workflow.WorkflowError as exc:
            raise Rejected("AE", HL7Error(ERR_REQUIRED_FIELD_MISSING, exc.reason, "PID", 3)) from exc
