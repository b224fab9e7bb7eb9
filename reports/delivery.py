"""Senders for the outbox (ris/outbox.py): HL7 v2 over MLLP and FHIR transaction Bundles over HTTP.

MLLP ("oru", "orm"): one message per connection to RIS_HIS_MLLP, then its ACK is read
(HL7 v2 §2.9 original mode, swf-spec §4): MSA-1 AA (or CA) delivered; AR/CR "resend later",
retried; AE/CE "this message is wrong", parked at once with the HIS's reason; no answer,
garbage, or an ACK for another message, retried.

FHIR ("fhir"): POST of the Bundle to RIS_FHIR_BASE_URL (FHIR R4 RESTful API, transaction).
2xx delivered; 408/429/5xx, time-outs and refused connections retried; any other 4xx parked
with the server's OperationOutcome text.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from django.conf import settings

from hl7.client import MLLPClient, parse_address
from ris.models import OutboundMessage
from ris.outbox import DeliveryError

ACK_DELIVERED = {"AA", "CA"}
ACK_RETRY = {"AR", "CR"}
ACK_PARK = {"AE", "CE"}
HTTP_RETRY = {408, 425, 429}
FHIR_CONTENT_TYPE = "application/fhir+json"


def read_ack(answer: bytes, control_id: str) -> tuple[str, str]:
    """(MSA-1, reason) of an ACK; DeliveryError (retry) when it is not an ACK to our message."""
    text = answer.decode("utf-8", errors="replace")
    segments = [s for s in text.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        raise DeliveryError(f"answer is not an HL7 message: {text[:200]!r}")
    separator = segments[0][3]
    msa = next((s.split(separator) for s in segments if s.startswith("MSA")), None)
    if msa is None or len(msa) < 3:
        raise DeliveryError(f"answer has no MSA segment: {text[:200]!r}")
    if msa[2] != control_id:
        raise DeliveryError(f"ACK is for message {msa[2]!r}, not {control_id!r}")
    reason = msa[3] if len(msa) > 3 else ""
    err = next((s.split(separator) for s in segments if s.startswith("ERR")), None)
    if err is not None and not reason:
        reason = separator.join(err[1:]).strip(separator)
    return msa[1], reason


def send_mllp(message: OutboundMessage) -> None:
    if not settings.RIS_HIS_MLLP:
        raise DeliveryError("RIS_HIS_MLLP is not set")
    if not message.payload:
        raise DeliveryError("empty payload", retry=False)
    host, port = parse_address(settings.RIS_HIS_MLLP)
    try:
        with MLLPClient(host, port, timeout=settings.RIS_OUTBOX_ACK_TIMEOUT) as client:
            answer = client.send(message.payload.encode("utf-8"))
    except (OSError, ConnectionError) as exc:
        raise DeliveryError(f"HIS {settings.RIS_HIS_MLLP}: {exc or type(exc).__name__}") from exc
    code, reason = read_ack(answer, message.message_control_id)
    if code in ACK_DELIVERED:
        return
    if code in ACK_PARK:
        raise DeliveryError(f"HIS answered {code}: {reason}", retry=False)
    if code in ACK_RETRY:
        raise DeliveryError(f"HIS answered {code}: {reason}")
    raise DeliveryError(f"HIS answered unknown MSA-1 {code!r}: {reason}")


def outcome_text(body: bytes) -> str:
    """The diagnostics of an OperationOutcome, or the start of whatever the server sent."""
    try:
        outcome = json.loads(body)
        issues = outcome.get("issue", []) if isinstance(outcome, dict) else []
        text = "; ".join(i.get("diagnostics") or i.get("details", {}).get("text", "") for i in issues)
        if text:
            return text
    except ValueError:
        pass
    return body[:300].decode("utf-8", errors="replace")


def send_fhir(message: OutboundMessage) -> None:
    base = settings.RIS_FHIR_BASE_URL
    if not base:
        raise DeliveryError("RIS_FHIR_BASE_URL is not set")
    request = urllib.request.Request(
        base.rstrip("/") + "/",
        data=message.payload.encode("utf-8"),
        method="POST",
        headers={"Content-Type": FHIR_CONTENT_TYPE, "Accept": FHIR_CONTENT_TYPE},
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.RIS_FHIR_TIMEOUT) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        reason = f"FHIR server answered {exc.code}: {outcome_text(exc.read())}"
        retry = exc.code >= 500 or exc.code in HTTP_RETRY
        raise DeliveryError(reason, retry=retry) from exc
    except (TimeoutError, OSError) as exc:
        raise DeliveryError(f"FHIR server {base}: {getattr(exc, 'reason', exc)}") from exc
    check_transaction_response(body)


def check_transaction_response(body: bytes) -> None:
    """A transaction succeeds or fails as a whole; still, refuse a 2xx whose entries say otherwise."""
    try:
        bundle = json.loads(body) if body else {}
    except ValueError:
        return  # a 2xx without a readable body: the server accepted the transaction
    for entry in bundle.get("entry", []) if isinstance(bundle, dict) else []:
        status = str(entry.get("response", {}).get("status", "200")).split()[0]
        if status.isdigit() and int(status) >= 400:
            raise DeliveryError(f"FHIR transaction entry answered {status}", retry=int(status) >= 500)
