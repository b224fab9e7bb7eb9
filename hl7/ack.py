"""Acknowledgments in original mode (HL7 v2 §2.9, swf-spec §4): MSA always, ERR on AE/AR.

An ACK, or for senders configured so the application response to an order: ORR^O02 to an
ORM^O01, ORI^O24 to an OMI^O23, with one ORC per order group carrying the order control
reply (OK, CR, DR, XR or UA, UC, UD, UX) and the placer/filler numbers. MSH-3/4 and 5/6 are
swapped, the version and character set are kept, MSA-2 echoes MSH-10. ERR is v2.3.1-style
(ERR-1 `seg^seq^field^code&text&HL70357`) for v2.3/v2.4 messages and v2.5-style (ERR-2
location, ERR-3 code, ERR-4 severity, ERR-8 text) for v2.5 and later.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from dataclasses import dataclass

from django.conf import settings

# HL7 table 0357 message error condition codes.
ERR_SEGMENT_SEQUENCE = 100
ERR_REQUIRED_FIELD_MISSING = 101
ERR_DATA_TYPE = 102
ERR_TABLE_VALUE_NOT_FOUND = 103
ERR_UNSUPPORTED_MESSAGE_TYPE = 200
ERR_UNSUPPORTED_EVENT = 201
ERR_UNSUPPORTED_PROCESSING_ID = 202
ERR_UNSUPPORTED_VERSION = 203
ERR_UNKNOWN_KEY = 204
ERR_DUPLICATE_KEY = 205
ERR_RECORD_LOCKED = 206
ERR_INTERNAL = 207

ERROR_TEXT = {
    ERR_SEGMENT_SEQUENCE: "Segment sequence error",
    ERR_REQUIRED_FIELD_MISSING: "Required field missing",
    ERR_DATA_TYPE: "Data type error",
    ERR_TABLE_VALUE_NOT_FOUND: "Table value not found",
    ERR_UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ERR_UNSUPPORTED_EVENT: "Unsupported event code",
    ERR_UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    ERR_UNSUPPORTED_VERSION: "Unsupported version id",
    ERR_UNKNOWN_KEY: "Unknown key identifier",
    ERR_DUPLICATE_KEY: "Duplicate key identifier",
    ERR_RECORD_LOCKED: "Application record locked",
    ERR_INTERNAL: "Application internal error",
}

# Order control replies (HL7 table 0119) to each request, accepted and refused.
ORDER_REPLIES = {"NW": ("OK", "UA"), "CA": ("CR", "UC"), "DC": ("DR", "UD"), "XO": ("XR", "UX"), "SC": ("OK", "UA")}
# The application response to each order message, when the sender asks for one.
ORDER_RESPONSES = {"ORM": ("ORR", "O02", "ORR_O02"), "OMI": ("ORI", "O24", "ORI_O24")}

_counter = itertools.count(1)


@dataclass
class HL7Error:
    """Where and why a message was refused: ERR location (segment, sequence, field, component)
    and the table 0357 code."""

    code: int
    text: str
    segment: str = ""
    field: int = 0
    sequence: int = 1
    component: int = 0


@dataclass
class OrderReply:
    """One ORC of an ORR^O02 / ORI^O24: the reply code and the order's numbers."""

    control: str
    placer_order_number: str = ""
    placer_issuer: str = ""
    filler_order_number: str = ""
    filler_issuer: str = ""


def escape(text: str) -> str:
    """HL7 escaping of the default delimiters ^~\\& and | in free text."""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
        .replace("\r", " ")
        .replace("\n", " ")
    )


def msh_field(msh: list[str], n: int) -> str:
    """MSH-n from the MSH segment split on '|' (MSH-1 is the separator itself, so MSH-n is at n-1)."""
    return msh[n - 1] if 2 <= n <= len(msh) else ""


def new_control_id() -> str:
    """MSH-10 of our answers: time, process and a counter, unique across listener copies."""
    return f"{dt.datetime.now(dt.UTC):%y%m%d%H%M%S}{os.getpid() % 100000:05d}{next(_counter) % 10**6:06d}"


def build_ack(msh: list[str], code: str, error: HL7Error | None = None, replies: list[OrderReply] | None = None) -> str:
    """The answer to the message with this MSH segment (split on '|'). With `replies` (and an
    ORM/OMI message) the answer is ORR^O02 / ORI^O24, else an ACK."""

    def f(n: int) -> str:
        return msh_field(msh, n)

    version = f(12).split("^")[0] or "2.5.1"
    kind, _, rest = f(9).partition("^")
    trigger = rest.split("^")[0]
    if replies is not None and kind in ORDER_RESPONSES:
        response, event, structure = ORDER_RESPONSES[kind]
        msg_type = f"{response}^{event}^{structure}"
    else:
        msg_type = f"ACK^{trigger}^ACK" if trigger else "ACK"
    header = [
        "MSH",
        "^~\\&",
        settings.RIS_AE_TITLE,
        settings.RIS_FACILITY,
        f(3),
        f(4),
        f"{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S}",
        "",
        msg_type,
        new_control_id(),
        f(11)[:1] or "P",
        version,
    ]
    if f(18):
        header += ["", "", "", "", "", f(18)]
    text = escape(error.text) if error else ""
    segments = ["|".join(header), "|".join(["MSA", code, f(10)] + ([text] if text else []))]
    if error:
        segments.append(err_segment(error, version))
    if replies is not None and kind in ORDER_RESPONSES:
        segments += [order_reply_segment(r) for r in replies]
    return "\r".join(segments) + "\r"


def err_segment(error: HL7Error, version: str) -> str:
    text = escape(error.text)
    name = ERROR_TEXT.get(error.code, "")
    location = [error.segment, str(error.sequence), str(error.field or "")] if error.segment else []
    if version.startswith(("2.3", "2.4", "2.2", "2.1")):
        # v2.3.1 ERR-1 (ELD): segment^sequence^field^code&text&HL70357
        return (
            f"ERR|{'^'.join([*location, f'{error.code}&{name}&HL70357'])}"
            if location
            else (f"ERR|^^^{error.code}&{name}&HL70357")
        )
    erl = "^".join(location + (["1", str(error.component)] if error.segment and error.component else []))
    return "|".join(["ERR", "", erl, f"{error.code}^{name}^HL70357", "E", "", "", "", text])


def order_reply_segment(reply: OrderReply) -> str:
    placer = f"{escape(reply.placer_order_number)}^{escape(reply.placer_issuer)}".rstrip("^")
    filler = f"{escape(reply.filler_order_number)}^{escape(reply.filler_issuer)}".rstrip("^")
    return "|".join(["ORC", reply.control, placer, filler])
