"""Filler orders to the HIS: ORM^O01 with ORC-1 SN ("send number", IHE RAD-3 Filler Order
Management, swf-spec §1 and §3) for an order placed at the RIS itself (walk-in, paper request).

One message per order: MSH (MSH-18 UNICODE UTF-8), PID, PV1, then one ORC/OBR/ZDS group per
requested procedure, ORC-2 placer (empty unless the scheduler typed the HIS's number), ORC-3 our
filler order number, OBR-18 accession, OBR-19 requested procedure id, OBR-24 modality, ZDS-1 the
Study Instance UID. The order placer may answer ORR^O02 NA with its number; the outbox only reads
MSA-1. Built as text like hl7.status_messages (the same conventions), written to the outbox
(destination "orm") by ris.workflow in the transaction that placed the order.
"""

from __future__ import annotations

from django.conf import settings

from hl7.ack import escape
from hl7.status_messages import entity_identifier, pid_segment, universal_service
from ris.models import ImagingOrder, Priority, RequestedProcedure
from ris.timeutil import to_local

ORDER_CONTROL_SEND_NUMBER = "SN"
ORDER_STATUS_SCHEDULED = "SC"  # HL7 table 0038: "in process, scheduled"
# Requested Procedure Priority (0040,1003) → TQ priority (ORC-7.6), the inverse of hl7.mapping.
TQ_PRIORITIES = {Priority.STAT: "S", Priority.HIGH: "A", Priority.MEDIUM: "T", Priority.ROUTINE: "R"}


def _ts(moment) -> str:
    local = to_local(moment)
    return local.strftime("%Y%m%d%H%M%S") if local else ""


def _entity(number: str, issuer: str) -> str:
    return entity_identifier(number, issuer) if number else ""


def _person(name: str) -> str:
    """XCN from a DICOM PN (family^given^middle): no id, then the name components."""
    return "^" + "^".join(escape(p) for p in name.split("^")) if name else ""


def _msh(order: ImagingOrder, control_id: str, now) -> str:
    return "|".join(
        [
            "MSH",
            "^~\\&",
            escape(settings.RIS_AE_TITLE),
            escape(settings.RIS_FACILITY),
            escape(order.source_application or settings.RIS_HIS_APPLICATION),
            escape(order.source_facility or settings.RIS_HIS_FACILITY),
            _ts(now),
            "",
            "ORM^O01",
            control_id,
            "P",
            settings.RIS_HIS_STATUS_VERSION,
            "",
            "",
            "",
            "",
            "",
            "UNICODE UTF-8",
        ]
    )


def _pv1(order: ImagingOrder) -> str:
    # PV1-2 U: patient class unknown to the RIS (table 0004); PV1-3 location, PV1-8 referring
    # doctor, PV1-19 visit number.
    fields = ["PV1", "1", "U", escape(order.patient_location)] + [""] * 4 + [_person(order.referring_physician)]
    fields += [""] * 10 + [escape(order.admission_id)]
    return "|".join(fields).rstrip("|")


def _order_group(exam: RequestedProcedure, set_id: int, now) -> list[str]:
    order = exam.order
    placer = _entity(order.placer_order_number, order.placer_issuer)
    filler = _entity(order.filler_order_number, order.filler_issuer)
    timing = "^^^^^" + TQ_PRIORITIES.get(order.priority, "R")
    orc = ["ORC", ORDER_CONTROL_SEND_NUMBER, placer, filler, "", ORDER_STATUS_SCHEDULED, "", timing, "", _ts(now)]
    orc += ["", "", _person(order.ordering_physician)]
    obr = ["OBR", str(set_id), placer, filler, universal_service(exam)]
    obr += [""] * 11 + [_person(order.ordering_physician)]
    obr += ["", escape(exam.accession_number), escape(exam.requested_procedure_id), "", "", "", "", exam.modality]
    obr += [""] * 6 + [escape(order.reason)]  # OBR-31 reason for study
    zds = f"ZDS|{exam.study_instance_uid}^^Application^DICOM"
    return ["|".join(orc).rstrip("|"), "|".join(obr).rstrip("|"), zds]


def build_filler_order_message(order: ImagingOrder, control_id: str, now) -> str:
    """The ORM^O01 SN announcing `order` (all its requested procedures) to the HIS."""
    segments = [_msh(order, control_id, now), pid_segment(order.patient), _pv1(order)]
    for set_id, exam in enumerate(order.requested_procedures.order_by("id"), start=1):
        segments += _order_group(exam, set_id, now)
    return "\r".join(segments) + "\r"
