"""Outbound order status messages to the HIS: ORM^O01 with ORC-1 SC (RAD-3 "status changed",
or XO in the RAD-13 style) and ORC-5 IP / CM / DC (HL7 table 0038), swf-spec §1 and §3.

The workflow writes the text built here into the outbox (destination "orm") in the transaction
that changed the exam; the outbox delivers it over MLLP and checks the ACK. MSH-10 is the
outbox row's stable control id, so a redelivery is recognisable as the same message.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings

from hl7.ack import escape
from ris.models import Patient, RequestedProcedure

# HL7 table 0038 order status values used for the exam life cycle.
ORDER_STATUS_IN_PROCESS = "IP"
ORDER_STATUS_COMPLETED = "CM"
ORDER_STATUS_DISCONTINUED = "DC"
ORDER_STATUSES = (ORDER_STATUS_IN_PROCESS, ORDER_STATUS_COMPLETED, ORDER_STATUS_DISCONTINUED)


def _ts(moment: dt.datetime | None) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S") if moment else ""


def pid_segment(patient: Patient) -> str:
    """PID-1 set id, PID-3 id^^^issuer, PID-5 name (XPN order: family, given, middle, suffix,
    prefix), PID-7 birth date, PID-8 sex."""
    name = "^".join(
        escape(p)
        for p in (
            patient.family_name,
            patient.given_name,
            patient.middle_name,
            patient.name_suffix,
            patient.name_prefix,
        )
    ).rstrip("^")
    birth = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    identifier = f"{escape(patient.patient_id)}^^^{escape(patient.issuer)}" if patient.issuer else patient.patient_id
    return "|".join(["PID", "1", "", identifier, "", name, "", birth, patient.sex])


def entity_identifier(number: str, issuer: str) -> str:
    """EI: number^namespace (ORC-2/3, OBR-2/3)."""
    return f"{escape(number)}^{escape(issuer)}" if issuer else escape(number)


def universal_service(exam: RequestedProcedure) -> str:
    """OBR-4: code^text^coding system, or ^text when the exam has no procedure code."""
    text = escape(exam.procedure_description)
    if exam.procedure_code:
        return f"{escape(exam.procedure_code)}^{text}^{escape(exam.procedure_code_scheme)}"
    return f"^{text}"


def build_order_status_message(exam: RequestedProcedure, order_status: str, control_id: str) -> str:
    """The ORM^O01 telling the HIS that `exam` is now `order_status` (IP, CM or DC).

    Segments: MSH, PID, ORC (ORC-1 control, ORC-2 placer, ORC-3 filler, ORC-5 status),
    OBR (OBR-4 procedure, OBR-18 accession, OBR-19 requested procedure id, OBR-24 modality).
    """
    if order_status not in ORDER_STATUSES:
        raise ValueError(f"unsupported order status {order_status!r}")
    order = exam.order
    receiver_app = order.source_application or getattr(settings, "RIS_HIS_APPLICATION", "HIS")
    receiver_facility = order.source_facility or getattr(settings, "RIS_HIS_FACILITY", "")
    now = _ts(dt.datetime.now(dt.UTC))
    msh = [
        "MSH",
        "^~\\&",
        settings.RIS_AE_TITLE,
        settings.RIS_FACILITY,
        escape(receiver_app),
        escape(receiver_facility),
        now,
        "",
        "ORM^O01",
        control_id,
        "P",
        settings.RIS_HIS_STATUS_VERSION,
    ]
    placer = entity_identifier(order.placer_order_number, order.placer_issuer)
    filler = entity_identifier(order.filler_order_number, order.filler_issuer)
    orc = ["ORC", settings.RIS_HIS_STATUS_ORDER_CONTROL, placer, filler, "", order_status, "", "", "", now]
    obr = ["OBR", "1", placer, filler, universal_service(exam)] + [""] * 13
    obr += [escape(exam.accession_number), escape(exam.requested_procedure_id), "", "", "", "", exam.modality]
    segments = ["|".join(msh), pid_segment(order.patient), "|".join(orc), "|".join(obr)]
    return "\r".join(segments) + "\r"
