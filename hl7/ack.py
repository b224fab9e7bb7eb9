"""Acknowledgments in original mode (HL7 v2 §2.9, swf-spec §4): MSA always, ERR on AE/AR."""

from __future__ import annotations

import datetime as dt
import uuid
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
    ERR_INTERNAL: "Application internal error",
}


@dataclass
class HL7Error:
    """Where and why a message was refused: ERR-2 location (segment, field) and table 0357 code."""

    code: int
    text: str
    segment: str = ""
    field: int | None = None


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


def build_ack(msh: list[str], code: str, error: HL7Error | None = None) -> str:
    """An ACK for the message with this MSH segment (split on '|').

    MSH-3/4 and MSH-5/6 are swapped, the version is kept, MSA-2 echoes MSH-10."""

    def f(n: int) -> str:
        return msh_field(msh, n)

    version = f(12).split("^")[0] or "2.5.1"
    trigger = f(9).split("^")[1] if "^" in f(9) else ""
    msg_type = f"ACK^{trigger}^ACK" if trigger else "ACK"
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    header = [
        "MSH",
        "^~\\&",
        settings.RIS_AE_TITLE,
        settings.RIS_FACILITY,
        f(3),
        f(4),
        now,
        "",
        msg_type,
        uuid.uuid4().hex[:20].upper(),
        f(11) or "P",
        version,
    ]
    charset = f(18)
    if charset:
        header += ["", "", "", "", "", charset]
    segments = ["|".join(header)]
    text = escape(error.text) if error else ""
    segments.append("|".join(["MSA", code, f(10)] + ([text] if text else [])))
    if error:
        location = f"{error.segment}^1^{error.field}" if error.segment and error.field else error.segment
        condition = f"{error.code}^{ERROR_TEXT.get(error.code, '')}^HL70357"
        severity = "E"
        segments.append("|".join(["ERR", "", location, condition, severity, "", "", "", text]))
    return "\r".join(segments) + "\r"
