"""HL7 v2 → domain records: the field mapping of IHE RAD-1/RAD-12 (ADT) and RAD-2/RAD-13
(ORM^O01 v2.3.1-2.5 with ZDS, OMI^O23 v2.5.1 with TQ1 + IPC), per swf-spec §2 and §10.

Pure functions over an er7.Message: no database. What does not fit raises MappingError
carrying the ERR location (segment, sequence, field, component) and the HL7 table 0357 code,
so the sender is told exactly which field to fix. The domain never sees HL7 structures:
it gets ris.workflow dataclasses (Demographics, OrderRequest, ProcedureRequest, StepRequest).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from hl7.ack import ERR_DATA_TYPE, ERR_REQUIRED_FIELD_MISSING, ERR_TABLE_VALUE_NOT_FOUND, HL7Error
from hl7.er7 import Message, Segment
from ris.models import Priority
from ris.timeutil import site_zone
from ris.workflow import ProcedureRequest, StepRequest

# HL7 table 0119 order control codes the RIS acts on, inbound.
ORDER_CONTROLS = ("NW", "CA", "DC", "XO", "SC")
# TQ priority (ORC-7.6 / TQ1-9) → Requested Procedure Priority (0040,1003), swf-spec §2.
PRIORITIES = {"S": Priority.STAT, "A": Priority.HIGH, "P": Priority.HIGH, "C": Priority.HIGH, "R": Priority.ROUTINE}
PRIORITIES["T"] = Priority.MEDIUM
# PID-8 administrative sex: F/M/O kept; A (ambiguous) and N (not applicable) → O; others unknown.
SEXES = {"F": "F", "M": "M", "O": "O", "A": "O", "N": "O", "U": ""}
# PV1-15 ambulatory status "B6" (pregnant) → Pregnancy Status (0010,21C0) 3 = definitely pregnant.
PREGNANT = "B6"
TS_PATTERN = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$")
UID_PATTERN = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))+$")
SH_MAX, LO_MAX, AE_MAX, UID_MAX = 16, 64, 16, 64


class MappingError(Exception):
    def __init__(self, error: HL7Error) -> None:
        super().__init__(error.text)
        self.error = error


def fail(code: int, text: str, seg: Segment | None, field_no: int, sequence: int = 1, component: int = 0):
    raise MappingError(HL7Error(code, text, seg.name if seg else "", field_no, sequence, component))


# --- values ------------------------------------------------------------------------------


def parse_ts(value: str, seg: Segment, field_no: int, component: int = 0, sequence: int = 1) -> dt.datetime | None:
    """HL7 TS/DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) as an aware datetime; a time without a
    zone is local to the site (RIS_TIME_ZONE). '' → None. Anything else (2026-11-26) is an AE."""
    if not value:
        return None
    m = TS_PATTERN.match(value)
    try:
        if not m:
            raise ValueError(value)
        year, month, day, hour, minute, second = (
            int(g) if g else d for g, d in zip(m.groups()[:6], (0, 1, 1, 0, 0, 0), strict=True)
        )
        zone = site_zone()
        if m.group(7):
            sign = 1 if m.group(7)[0] == "+" else -1
            offset = dt.timedelta(hours=int(m.group(7)[1:3]), minutes=int(m.group(7)[3:5]))
            zone = dt.timezone(sign * offset)
        return dt.datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError:
        fail(
            ERR_DATA_TYPE, f"{value!r} is not an HL7 date/time (YYYYMMDD[HHMM[SS]])", seg, field_no, sequence, component
        )


def parse_date(value: str, seg: Segment, field_no: int) -> dt.date | None:
    moment = parse_ts(value, seg, field_no)
    return moment.date() if moment else None


def person_name_from_xcn(parts: list[str]) -> str:
    """XCN ID^family^given^middle^suffix^prefix^degree → DICOM PN family^given^middle^prefix^suffix."""
    p = [*parts[1:7], "", "", "", "", "", ""]
    return "^".join([p[0], p[1], p[2], p[4], p[3]]).rstrip("^")


def technician_name(obr: Segment) -> str:
    """OBR-34 (first repetition): CN subcomponents ID&family&given&middle&suffix&prefix in the
    first component, or, as many senders write it, XCN-like components ID^family^given."""
    if obr.get(34, 1, 2):
        p = [obr.get(34, 1, i) for i in range(2, 7)]
        return "^".join([p[0], p[1], p[2], p[4], p[3]]).rstrip("^")
    return person_name_from_xcn(obr.components(34))


def limited(value: str, limit: int, seg: Segment, field_no: int, what: str, sequence: int = 1) -> str:
    """Identifiers are never truncated (swf-spec §10.6): too long is an AE naming the field."""
    if len(value) > limit:
        fail(ERR_DATA_TYPE, f"{what} {value!r} is longer than {limit} characters", seg, field_no, sequence)
    return value


def coded_text(seg: Segment, field_no: int) -> str:
    """A CE/CWE as text: its text component, else its code."""
    return seg.get(field_no, 2) or seg.get(field_no, 1)


# --- patients ----------------------------------------------------------------------------


@dataclass
class PatientRecord:
    """PID as the domain needs it. `demographics` holds only what the message valued:
    a missing key keeps the stored value, '' or None clears it (HL7 "")."""

    patient_id: str
    issuer: str
    demographics: dict[str, Any]


def patient_from_pid(pid: Segment | None, required: bool = True) -> PatientRecord | None:
    if pid is None or not pid.get(3):
        if required:
            fail(ERR_REQUIRED_FIELD_MISSING, "patient identifier (PID-3) is missing", pid, 3, component=1)
        return None
    patient_id = limited(pid.get(3, 1), 64, pid, 3, "patient identifier")
    issuer = pid.get(3, 4) or pid.get(3, 4, 2)
    values: dict[str, Any] = {}
    name_fields = ("family_name", "given_name", "middle_name", "name_suffix", "name_prefix")
    if pid.is_null(5):
        values.update(dict.fromkeys(name_fields, ""))
    elif pid.raw(5):
        parts = [*pid.components(5), "", "", "", "", ""]
        values.update({k: parts[i][:64] for i, k in enumerate(name_fields)})
    if pid.is_null(7):
        values["birth_date"] = None
    elif pid.get(7):
        values["birth_date"] = parse_date(pid.get(7), pid, 7)
    if pid.is_null(8):
        values["sex"] = ""
    elif pid.get(8):
        sex = pid.get(8).upper()
        if sex not in SEXES:
            fail(ERR_TABLE_VALUE_NOT_FOUND, f"administrative sex {sex!r} is not in HL7 table 0001", pid, 8)
        values["sex"] = SEXES[sex]
    return PatientRecord(patient_id, issuer, values)


@dataclass
class MergeRecord:
    """ADT^A40: the record MRG-1 names is merged into the surviving PID-3."""

    survivor: PatientRecord
    merged_id: str
    merged_issuer: str
    mrg_sequence: int


def merges_of(message: Message) -> list[MergeRecord]:
    merges, pid = [], None
    mrg_sequence = 0
    for seg in message.segments[1:]:
        if seg.name == "PID":
            pid = seg
        elif seg.name == "MRG":
            mrg_sequence += 1
            survivor = patient_from_pid(pid)
            if not seg.get(1):
                fail(ERR_REQUIRED_FIELD_MISSING, "prior patient identifier (MRG-1) is missing", seg, 1, mrg_sequence, 1)
            merges.append(MergeRecord(survivor, seg.get(1, 1), seg.get(1, 4), mrg_sequence))
    if not merges:
        fail(ERR_REQUIRED_FIELD_MISSING, "ADT^A40 needs a PID/MRG pair", None, 0)
    return merges


# --- orders ------------------------------------------------------------------------------


@dataclass
class OrderItem:
    """One ORC with the OBR/TQ1/IPC/ZDS that follow it: order control, numbers, order-level
    details and the requested procedure(s) with their step(s)."""

    control: str
    order_status: str
    placer_order_number: str
    placer_issuer: str
    filler_order_number: str
    filler_issuer: str
    order_fields: dict[str, Any]
    procedures: list[ProcedureRequest]
    orc: Segment
    orc_sequence: int
    explicit_station: bool = False
    has_start: bool = False
    has_procedure: bool = False
    has_modality: bool = False


@dataclass
class Visit:
    referring_physician: str = ""
    admission_id: str = ""
    patient_location: str = ""
    pregnancy_status: int | None = None


@dataclass
class _Group:
    orc: Segment
    sequence: int
    obr: Segment | None = None
    tq1: Segment | None = None
    ipcs: list[Segment] = field(default_factory=list)
    zds: Segment | None = None


def visit_of(message: Message) -> Visit:
    pv1, pid = message.first("PV1"), message.first("PID")
    visit = Visit()
    if pv1 is not None:
        visit.referring_physician = person_name_from_xcn(pv1.components(8))[:200]
        visit.admission_id = pv1.get(19)[:64]
        visit.patient_location = "^".join(p for p in pv1.components(3)[:3] if p)[:64]
        visit.pregnancy_status = (
            3 if PREGNANT in [r.split(pv1.delimiters.component)[0] for r in pv1.repetitions(15)] else None
        )
    if not visit.admission_id and pid is not None:
        visit.admission_id = pid.get(18)[:64]
    return visit


def order_items(message: Message, protocol_components: str = "4-6") -> list[OrderItem]:
    """The ORC groups of an ORM^O01 or OMI^O23, mapped (swf-spec §2)."""
    groups: list[_Group] = []
    for seg in message.segments[1:]:
        if seg.name == "ORC":
            groups.append(_Group(seg, len(groups) + 1))
        elif groups and seg.name == "OBR" and groups[-1].obr is None:
            groups[-1].obr = seg
        elif groups and seg.name == "OBR":
            # A further OBR under the same ORC is its own procedure with the same order control.
            groups.append(_Group(groups[-1].orc, groups[-1].sequence, obr=seg))
        elif groups and seg.name == "TQ1" and groups[-1].tq1 is None:
            groups[-1].tq1 = seg
        elif groups and seg.name == "IPC":
            groups[-1].ipcs.append(seg)
        elif groups and seg.name == "ZDS":
            groups[-1].zds = seg
        elif not groups and seg.name in ("OBR", "TQ1", "IPC"):
            fail(100, f"{seg.name} before the first ORC", seg, 0)
    if not groups:
        fail(ERR_REQUIRED_FIELD_MISSING, "the order has no ORC segment", None, 0)
    visit = visit_of(message)
    return [_item(g, visit, protocol_components) for g in groups]


def _item(g: _Group, visit: Visit, protocol_components: str) -> OrderItem:
    orc, obr, tq1 = g.orc, g.obr, g.tq1
    control = orc.get(1).upper()
    if control not in ORDER_CONTROLS:
        fail(
            ERR_TABLE_VALUE_NOT_FOUND,
            f"order control {control!r} is not supported (NW, CA, DC, XO, SC)",
            orc,
            1,
            g.sequence,
        )
    if obr is None and control in ("NW", "XO"):
        fail(ERR_REQUIRED_FIELD_MISSING, f"order control {control} needs an OBR segment", orc, 1, g.sequence)
    placer = orc.get(2) or (obr.get(2) if obr else "")
    placer_issuer = orc.get(2, 2) if orc.get(2) else (obr.get(2, 2) if obr else "")
    filler = orc.get(3) or (obr.get(3) if obr else "")
    filler_issuer = orc.get(3, 2) if orc.get(3) else (obr.get(3, 2) if obr else "")
    if not placer and not filler:
        fail(ERR_REQUIRED_FIELD_MISSING, "placer order number (ORC-2) is missing", orc, 2, g.sequence)
    if tq1 is not None:
        start = parse_ts(tq1.get(7), tq1, 7)
        priority_code = tq1.get(9)
    else:
        start = parse_ts(orc.get(7, 4), orc, 7, component=4, sequence=g.sequence)
        priority_code = orc.get(7, 6)
    order_fields: dict[str, Any] = {
        "referring_physician": visit.referring_physician,
        "admission_id": visit.admission_id,
        "patient_location": visit.patient_location,
        "pregnancy_status": visit.pregnancy_status,
        "priority": PRIORITIES.get(priority_code.upper(), Priority.ROUTINE),
    }
    procedures: list[ProcedureRequest] = []
    item = OrderItem(
        control,
        orc.get(5).upper(),
        limited(placer, 64, orc, 2, "placer order number", g.sequence),
        placer_issuer[:64],
        limited(filler, 64, orc, 3, "filler order number", g.sequence),
        filler_issuer[:64],
        order_fields,
        procedures,
        orc,
        g.sequence,
        has_start=start is not None,
    )
    if obr is None:
        return item
    ordering = person_name_from_xcn(obr.components(16)) or person_name_from_xcn(orc.components(12))
    order_fields.update(
        ordering_physician=ordering[:200],
        reason=coded_text(obr, 31)[:200],
        medical_alerts=obr.get(13)[:200],
        patient_state=coded_text(obr, 12)[:64],
        transport_arrangements=obr.get(30)[:64],
    )
    codes = _protocol_codes(obr, protocol_components)
    item.has_procedure = bool(obr.raw(44) or obr.raw(4))
    code, text, scheme = obr.get(44, 1), obr.get(44, 2), obr.get(44, 3)
    if not code and obr.get(4, 1):
        code, text, scheme = obr.get(4, 1), obr.get(4, 2), obr.get(4, 3)
    if not code and codes:
        code, text, scheme = codes[0]["code"], codes[0]["meaning"], codes[0]["scheme"]
    code = limited(code, SH_MAX, obr, 44, "procedure code")
    description = (text or (codes[0]["meaning"] if codes else ""))[:LO_MAX]
    station = orc.get(18)
    base = dict(
        modality=obr.get(24).upper(),
        procedure_code=code,
        procedure_code_scheme=scheme[:16],
        procedure_description=description,
        accession_number=limited(obr.get(18), SH_MAX, obr, 18, "accession number"),
        requested_procedure_id=limited(obr.get(19), SH_MAX, obr, 19, "requested procedure id"),
        study_instance_uid=_uid(g.zds.get(1) if g.zds else "", g.zds, 1),
    )
    step = dict(
        start=start,
        sps_id=limited(obr.get(20), SH_MAX, obr, 20, "scheduled procedure step id"),
        station_ae_title=limited(station, AE_MAX, orc, 18, "station AE title", g.sequence),
        description=(codes[0]["meaning"] if codes else description)[:LO_MAX],
        protocol_codes=codes,
        performing_physician=technician_name(obr)[:200],
    )
    item.explicit_station = bool(station)
    if not g.ipcs:
        item.has_modality = bool(base["modality"])
        procedures.append(_procedure(base, step))
        return item
    for n, ipc in enumerate(g.ipcs, start=1):
        modality = ipc.get(5).upper() or base["modality"]
        item.has_modality = item.has_modality or bool(modality)
        ipc_codes = (
            [{"code": ipc.get(6, 1), "scheme": ipc.get(6, 3), "meaning": ipc.get(6, 2)[:LO_MAX]}]
            if ipc.get(6)
            else codes
        )
        ipc_station = limited(ipc.get(9), AE_MAX, ipc, 9, "station AE title", n) or step["station_ae_title"]
        item.explicit_station = item.explicit_station or bool(ipc_station)
        procedures.append(
            _procedure(
                {
                    **base,
                    "modality": modality,
                    "accession_number": limited(ipc.get(1), SH_MAX, ipc, 1, "accession number", n)
                    or base["accession_number"],
                    "accession_issuer": ipc.get(1, 2)[:64],
                    "requested_procedure_id": limited(ipc.get(2), SH_MAX, ipc, 2, "requested procedure id", n)
                    or base["requested_procedure_id"],
                    "study_instance_uid": _uid(ipc.get(3), ipc, 3, n) or base["study_instance_uid"],
                },
                {
                    **step,
                    "sps_id": limited(ipc.get(4), SH_MAX, ipc, 4, "scheduled procedure step id", n) or step["sps_id"],
                    "station_ae_title": ipc_station,
                    "station_name": ipc.get(7)[:16],
                    "location": ipc.get(8)[:16],
                    "protocol_codes": ipc_codes,
                    "description": (ipc_codes[0]["meaning"] if ipc_codes else step["description"])[:LO_MAX],
                },
            )
        )
    return item


def _procedure(base: dict[str, Any], step: dict[str, Any]) -> ProcedureRequest:
    return ProcedureRequest(**base, steps=[StepRequest(modality=base["modality"], **step)])


def _uid(value: str, seg: Segment | None, field_no: int, sequence: int = 1) -> str:
    if value and (len(value) > UID_MAX or not UID_PATTERN.match(value)):
        fail(ERR_DATA_TYPE, f"{value!r} is not a DICOM UID", seg, field_no, sequence)
    return value


def _protocol_codes(obr: Segment, components: str) -> list[dict[str, str]]:
    """OBR-4 as the Scheduled Protocol Code Sequence: IHE's alternate triplet (components 4-6)
    by default, or the identifier (1-3) for senders configured so (swf-spec §2, 'sources disagree')."""
    first = 1 if components == "1-3" else 4
    code = obr.get(4, first)
    if not code:
        return []
    code = limited(code, SH_MAX, obr, 4, "protocol code")
    return [{"code": code, "meaning": obr.get(4, first + 1)[:LO_MAX], "scheme": obr.get(4, first + 2)[:16]}]


def merge_for_placement(items: list[OrderItem]) -> list[OrderItem]:
    """NW groups with the same placer/filler numbers are one order; procedures with the same
    accession number (or RP ID) are one exam; steps with the same SPS ID are one step whose
    protocol codes add up (swf-spec §10.5)."""
    orders: dict[tuple[str, str, str, str], OrderItem] = {}
    for item in items:
        key = (item.placer_order_number, item.placer_issuer, item.filler_order_number, item.filler_issuer)
        if key not in orders:
            orders[key] = OrderItem(**{**vars(item), "procedures": []})
        merged = orders[key]
        for proc in item.procedures:
            _add_procedure(merged.procedures, proc)
    return list(orders.values())


def _add_procedure(procedures: list[ProcedureRequest], proc: ProcedureRequest) -> None:
    same = next(
        (
            p
            for p in procedures
            if (proc.accession_number and p.accession_number == proc.accession_number)
            or (
                not proc.accession_number
                and proc.requested_procedure_id
                and p.requested_procedure_id == proc.requested_procedure_id
            )
        ),
        None,
    )
    if same is None:
        procedures.append(proc)
        return
    for step in proc.steps:
        twin = next((s for s in same.steps if step.sps_id and s.sps_id == step.sps_id), None)
        if twin is None:
            same.steps.append(step)
        else:
            twin.protocol_codes += [c for c in step.protocol_codes if c not in twin.protocol_codes]
