"""Worklist answers (PS3.4 K.6, Table K.6-1): prepared per scheduled step, filtered per query.

`build_mwl_dataset` writes one Scheduled Procedure Step's full answer as DICOM JSON (PS3.18
Annex F) when the step is scheduled or changes (the `scheduled_steps_changed` receiver,
inside the workflow's transaction), so a C-FIND only filters rows in SQL and streams them.
Every Type 1 and Type 2 return key of Table K.6-1 is present (zero-length when unknown).

`ResponseBuilder` turns a prepared answer into the response identifier for one query: only the
requested keys (Sequence Matching: one SPS item, only the requested item keys), text converted
to the console's character set (ISO_IR 192, ISO_IR 100 or transliterated ASCII, PS3.5 6.1),
Specific Character Set set when the answer is not plain ASCII.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

from anyascii import anyascii
from django.db.models import Model
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ris.timeutil import site_zone
from worklist.models import AnswerCharacterSet

TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})
SPECIFIC_CHARACTER_SET = 0x00080005
SPS_SEQUENCE = 0x00400100


@cache
def tag_key(keyword: str) -> str:
    """DICOM JSON attribute key ("00100010") of a keyword."""
    return f"{tag_for_keyword(keyword):08X}"


_vr_of = cache(dictionary_VR)


def element(keyword: str, value=None) -> tuple[str, dict]:
    """One DICOM JSON attribute; an empty value gives a zero-length attribute (Type 2)."""
    vr = _vr_of(keyword)
    if value in (None, "", []):
        return tag_key(keyword), {"vr": vr}
    if vr == "PN":
        return tag_key(keyword), {"vr": vr, "Value": [{"Alphabetic": value}]}
    return tag_key(keyword), {"vr": vr, "Value": value if isinstance(value, list) else [value]}


def code_item(code: str, scheme: str, meaning: str) -> dict:
    return dict(
        [element("CodeValue", code), element("CodingSchemeDesignator", scheme), element("CodeMeaning", meaning)]
    )


def person_name(patient: Model) -> str:
    parts = [patient.family_name, patient.given_name, patient.middle_name, patient.name_prefix, patient.name_suffix]
    return "^".join(parts).rstrip("^")


def build_mwl_dataset(step: Model) -> dict:
    """The full worklist answer of one step (its exam, order and patient loaded) as DICOM JSON.

    Uses only model fields, so a migration can call it with historical models.
    """
    exam = step.requested_procedure
    order = exam.order
    patient = order.patient
    start = step.start.astimezone(site_zone()) if step.start else None
    procedure_codes = (
        [code_item(exam.procedure_code, exam.procedure_code_scheme or "LOCAL", exam.procedure_description)]
        if exam.procedure_code
        else []
    )
    protocol_codes = [
        code_item(c.get("code", ""), c.get("scheme", ""), c.get("meaning", "")) for c in step.protocol_codes or []
    ]
    sps = dict(
        [
            element("ScheduledStationAETitle", step.station_ae_title),
            element("ScheduledProcedureStepStartDate", start.strftime("%Y%m%d") if start else ""),
            element("ScheduledProcedureStepStartTime", start.strftime("%H%M%S") if start else ""),
            element("Modality", step.modality),
            element("ScheduledPerformingPhysicianName", step.performing_physician),
            element("ScheduledProcedureStepDescription", step.description),
            element("ScheduledProtocolCodeSequence", protocol_codes),
            element("ScheduledProcedureStepID", step.sps_id),
            element("ScheduledStationName", step.station_name),
            element("ScheduledProcedureStepLocation", step.location),
            element("PreMedication", step.pre_medication),
            element("RequestedContrastAgent", step.contrast_agent),
            element("ScheduledProcedureStepStatus", step.status),
        ]
    )
    issuer = [dict([element("LocalNamespaceEntityID", exam.accession_issuer)])] if exam.accession_issuer else []
    return dict(
        [
            # Patient identification, demographics and medical status (K.6-1 patient modules)
            element("PatientName", person_name(patient)),
            element("PatientID", patient.patient_id),
            element("IssuerOfPatientID", patient.issuer),
            element("PatientBirthDate", patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""),
            element("PatientSex", patient.sex),
            element("PatientWeight"),
            element("ConfidentialityConstraintOnPatientDataDescription"),
            element("PatientState", order.patient_state),
            element("PregnancyStatus", order.pregnancy_status),
            element("MedicalAlerts", order.medical_alerts),
            element("Allergies", order.allergies),
            element("SpecialNeeds"),
            element("ReferencedPatientSequence"),
            # Visit
            element("AdmissionID", order.admission_id),
            element("CurrentPatientLocation", order.patient_location),
            # Imaging service request
            element("AccessionNumber", exam.accession_number),
            element("IssuerOfAccessionNumberSequence", issuer),
            element("ReferringPhysicianName", order.referring_physician),
            element("RequestingPhysician", order.ordering_physician),
            element("ReasonForTheRequestedProcedure", order.reason),
            element("PlacerOrderNumberImagingServiceRequest", order.placer_order_number),
            element("FillerOrderNumberImagingServiceRequest", order.filler_order_number),
            # Requested procedure
            element("RequestedProcedureID", exam.requested_procedure_id),
            element("RequestedProcedureDescription", exam.procedure_description),
            element("RequestedProcedureCodeSequence", procedure_codes),
            element("StudyInstanceUID", exam.study_instance_uid),
            element("ReferencedStudySequence"),
            element("RequestedProcedurePriority", order.priority),
            element("PatientTransportArrangements", order.transport_arrangements),
            # Scheduled procedure step: exactly one item (K.6.1.2.2)
            element("ScheduledProcedureStepSequence", [sps]),
        ]
    )


def refresh_steps(steps: Iterable[Model]) -> None:
    """Rebuild the prepared answers of these steps from the database, in the caller's transaction.

    A step not saved yet (a new order) gets its answer in memory, from the exam, order and
    patient it carries, and the caller's INSERT stores it: no read back, no second write."""
    from ris.models import ScheduledStep

    steps = list(steps)
    for step in steps:
        if step.pk is None:
            step.mwl_dataset = build_mwl_dataset(step) if step.start is not None else None
    given = {s.pk: s for s in steps if s.pk}
    if not given:
        return
    rows = list(ScheduledStep.objects.filter(pk__in=given).select_related("requested_procedure__order__patient"))
    for row in rows:
        # A step without a start time is not on the worklist: no answer to prepare.
        row.mwl_dataset = build_mwl_dataset(row) if row.start is not None else None
        given[row.pk].mwl_dataset = row.mwl_dataset  # so a later save() of the caller's copy keeps it
    ScheduledStep.objects.bulk_update(rows, ["mwl_dataset"], batch_size=500)


def on_scheduled_steps_changed(sender, steps, **kwargs) -> None:
    refresh_steps(steps)


# --- Responses ----------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One requested return key: its tag, DICOM JSON key, VR and, for a sequence, the item
    keys asked for (None = the whole stored sequence)."""

    tag: int
    key: str
    vr: str
    items: tuple[Field, ...] | None = None


def requested_fields(identifier: Dataset) -> tuple[Field, ...]:
    """The return keys of a query identifier (Specific Character Set and group lengths excluded)."""
    fields = []
    for elem in identifier:
        tag = int(elem.tag)
        if tag == SPECIFIC_CHARACTER_SET or elem.tag.element == 0:
            continue
        items = None
        if elem.VR == "SQ" and elem.value and len(elem.value[0]) > 0:
            items = requested_fields(elem.value[0])
        fields.append(Field(tag, f"{tag:08X}", elem.VR, items))
    return tuple(fields)


def transliterate_latin1(text: str) -> str:
    """Keep what Latin-1 can show ("Müller"), spell the rest in ASCII ("Nguyễn" → "Nguyen")."""
    try:
        text.encode("latin-1")
        return text
    except UnicodeEncodeError:
        return "".join(c if ord(c) < 256 else anyascii(c) for c in text)


class ResponseBuilder:
    """Builds response identifiers in one answer character set (a Modality's setting)."""

    def __init__(self, fields: tuple[Field, ...], charset: str = AnswerCharacterSet.UTF8) -> None:
        self.fields = fields
        self.charset = charset
        self.convert = {
            AnswerCharacterSet.LATIN1: transliterate_latin1,
            AnswerCharacterSet.ASCII: anyascii,
        }.get(charset)

    def build(self, stored: dict) -> Dataset:
        self._non_ascii = False
        ds = Dataset()
        self._fill(ds, self.fields, stored)
        if self._non_ascii:
            latin1 = self.charset == AnswerCharacterSet.LATIN1
            ds.add(DataElement(SPECIFIC_CHARACTER_SET, "CS", "ISO_IR 100" if latin1 else "ISO_IR 192"))
        return ds

    def _fill(self, ds: Dataset, fields: tuple[Field, ...] | None, stored: dict) -> None:
        if fields is None:  # the whole item: every stored attribute
            for key, attr in stored.items():
                tag = int(key, 16)
                ds.add(DataElement(tag, attr["vr"], self._value(attr, None)))
            return
        for f in fields:
            attr = stored.get(f.key)
            vr = attr["vr"] if attr else f.vr
            ds.add(DataElement(f.tag, vr, self._value(attr, f.items) if attr else ([] if vr == "SQ" else None)))

    def _value(self, attr: dict, items: tuple[Field, ...] | None):
        vr, values = attr["vr"], attr.get("Value")
        if not values:
            return [] if vr == "SQ" else None
        if vr == "SQ":
            sequence = Sequence()
            for item in values:
                child = Dataset()
                self._fill(child, items, item)
                sequence.append(child)
            return sequence
        if vr == "PN":
            values = [v.get("Alphabetic", "") for v in values]
        if vr in TEXT_VRS:
            values = [self._text(v) for v in values]
        return values[0] if len(values) == 1 else values

    def _text(self, text: str) -> str:
        if text.isascii():
            return text
        if self.convert is not None:
            text = self.convert(text)
        self._non_ascii = self._non_ascii or not text.isascii()
        return text

    # --- Direct encoding: the hot path of a C-FIND ---------------------------------------

    def encode(self, stored: dict, implicit_vr: bool) -> bytes:
        """The response identifier of `stored` as Little Endian bytes (implicit or explicit VR),
        byte for byte what pydicom would decode back to `build(stored)`; ~10x faster than
        building a Dataset and letting pydicom write it, which matters for broad queries."""
        self._non_ascii = False
        body = b"".join(self._encode_fields(self.fields, stored, implicit_vr))
        if not self._non_ascii:
            return body
        term = b"ISO_IR 100" if self.charset == AnswerCharacterSet.LATIN1 else b"ISO_IR 192"
        return _element_bytes(SPECIFIC_CHARACTER_SET, "CS", term, implicit_vr) + body

    def _encode_fields(self, fields: tuple[Field, ...] | None, stored: dict, implicit_vr: bool) -> Iterator[bytes]:
        if fields is None:
            for key in sorted(stored):
                attr = stored[key]
                yield self._encode_attr(int(key, 16), attr["vr"], attr, None, implicit_vr)
            return
        for f in fields:
            attr = stored.get(f.key)
            yield self._encode_attr(f.tag, attr["vr"] if attr else f.vr, attr, f.items, implicit_vr)

    def _encode_attr(self, tag: int, vr: str, attr: dict | None, items, implicit_vr: bool) -> bytes:
        values = attr.get("Value") if attr else None
        if vr == "SQ":
            body = b"".join(
                ITEM_START + b"".join(self._encode_fields(items, item, implicit_vr)) + ITEM_END for item in values or []
            )
            return _element_bytes(tag, "SQ", body + SEQUENCE_END, implicit_vr, undefined_length=True)
        if not values:
            return _element_bytes(tag, vr, b"", implicit_vr)
        if vr in BINARY_FORMATS:
            return _element_bytes(tag, vr, struct.pack(f"<{len(values)}{BINARY_FORMATS[vr]}", *values), implicit_vr)
        if vr == "PN":
            values = [v.get("Alphabetic", "") for v in values]
        text = "\\".join(str(v) for v in values)
        if vr in TEXT_VRS:
            text = self._text(text)
            data = text.encode("latin-1" if self.charset == AnswerCharacterSet.LATIN1 else "utf-8")
        else:
            data = text.encode("ascii", "replace")
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
        return _element_bytes(tag, vr, data, implicit_vr)


ITEM_START = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
# VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
BINARY_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "AT": "I"}


def _element_bytes(tag: int, vr: str, value: bytes, implicit_vr: bool, undefined_length: bool = False) -> bytes:
    length = 0xFFFFFFFF if undefined_length else len(value)
    if implicit_vr:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length) + value
    if vr in LONG_LENGTH_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length) + value


class PreparedResponse:
    """A pending C-FIND response identifier, encoded straight from the prepared answer when
    pynetdicom sends it (worklist.mwl routes pynetdicom's identifier encoder here, the only
    place pynetdicom touches a pending identifier). `dataset()` gives the pydicom form, for
    big endian or deflated transfer syntaxes."""

    __slots__ = ("builder", "stored")

    def __init__(self, builder: ResponseBuilder, stored: dict) -> None:
        self.builder, self.stored = builder, stored

    def encode_identifier(self, implicit_vr: bool) -> bytes:
        return self.builder.encode(self.stored, implicit_vr)

    def dataset(self) -> Dataset:
        return self.builder.build(self.stored)


# --- DIMSE command sets ---------------------------------------------------------------

COMMAND_STRING_VRS = frozenset({"UI", "AE", "LO", "SH", "CS", "ST", "DA", "TM"})
COMMAND_NUMBER_FORMATS = {"US": "H", "UL": "I", "SS": "h", "SL": "i"}


def encode_command_set(ds: Dataset) -> bytes:
    """A DIMSE command set (group 0000) in Implicit VR Little Endian (PS3.7 6.3.1), byte for
    byte what pydicom writes; raises ValueError on anything it does not handle, so the
    caller falls back to pydicom. Every C-FIND response carries one, so this is hot."""
    parts = []
    for elem in ds.elements():
        if not isinstance(elem, DataElement) or elem.tag >> 16 != 0:
            raise ValueError("not a plain command element")
        parts.append(command_element(elem.tag, elem.VR, elem.value))
    return b"".join(parts)


def command_element(tag: int, vr: str, value) -> bytes:
    """One command element, Implicit VR Little Endian; ValueError for a VR or value it does not
    handle (a non-ASCII text among them)."""
    if value is None or value == "":
        data = b""
    elif vr in COMMAND_STRING_VRS and isinstance(value, str):
        data = value.encode("ascii")
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
    elif vr in COMMAND_NUMBER_FORMATS and isinstance(value, int):
        data = struct.pack("<" + COMMAND_NUMBER_FORMATS[vr], value)
    elif vr == "AT":
        tags = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        data = b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in tags)
    else:
        raise ValueError(f"command element {tag:08X} with VR {vr}")
    return struct.pack("<HHI", 0, tag & 0xFFFF, len(data)) + data


# A C-STORE-RSP's command elements (PS3.7 Table 9.3-2) in tag order: (tag, VR, the attribute of
# pynetdicom's C_STORE primitive that holds the value, or the value itself).
C_STORE_RSP_ELEMENTS = (
    (0x00000002, "UI", "AffectedSOPClassUID"),
    (0x00000100, "US", 0x8001),  # Command Field: C-STORE-RSP
    (0x00000120, "US", "MessageIDBeingRespondedTo"),
    (0x00000800, "US", 0x0101),  # Command Data Set Type: none
    (0x00000900, "US", "Status"),
    (0x00000901, "AT", "OffendingElement"),
    (0x00000902, "LO", "ErrorComment"),
    (0x00001000, "UI", "AffectedSOPInstanceUID"),
)


def encode_c_store_response(primitive) -> bytes:
    """The command set of a C-STORE-RSP straight from pynetdicom's C_STORE primitive, Command
    Group Length first: byte for byte what pynetdicom builds through a pydicom Dataset, which
    cost ~110 µs of each instance stored (tests/test_mwl_datasets.py compares the two).
    ValueError for anything command_element does not handle."""
    values = (
        (tag, vr, source if isinstance(source, int) else getattr(primitive, source))
        for tag, vr, source in C_STORE_RSP_ELEMENTS
    )
    body = b"".join(command_element(tag, vr, value) for tag, vr, value in values if value is not None)
    return command_element(0x00000000, "UL", len(body)) + body


# A C-STORE-RQ's command elements (PS3.7 Table 9.3-1, without the Move Originator pair, which a
# C-MOVE sub-operation adds and pynetdicom handles): tag -> (VR, C_STORE primitive attribute, or
# None for an element the primitive has no attribute for).
C_STORE_RQ_ELEMENTS = {
    0x0000: ("UL", None),  # Command Group Length
    0x0002: ("UI", "AffectedSOPClassUID"),
    0x0100: ("US", None),  # Command Field
    0x0110: ("US", "MessageID"),
    0x0700: ("US", "Priority"),
    0x0800: ("US", None),  # Command Data Set Type
    0x1000: ("UI", "AffectedSOPInstanceUID"),
}
_ELEMENT_HEADER = struct.Struct("<HHI")
_NUMBER_LAYOUTS = {vr: struct.Struct("<" + COMMAND_NUMBER_FORMATS[vr]) for vr in ("US", "UL")}


def decode_c_store_request(encoded: bytes) -> dict[str, int | str] | None:
    """The C_STORE primitive's attributes from a C-STORE-RQ command set (Implicit VR Little
    Endian), read without pydicom: what pynetdicom's DIMSEMessage.message_to_primitive takes from
    the Dataset it decoded, ~100 µs of each instance stored. None for anything but the plain case
    (another element, several or empty values, non-ASCII text, a short element), which is left
    to pynetdicom (tests/test_mwl_datasets.py compares the two)."""
    fields: dict[str, int | str] = {}
    offset = 0
    while offset < len(encoded):
        if offset + 8 > len(encoded):
            return None
        group, element, length = _ELEMENT_HEADER.unpack_from(encoded, offset)
        value = encoded[offset + 8 : offset + 8 + length]
        offset += 8 + length
        if group != 0 or element not in C_STORE_RQ_ELEMENTS or len(value) != length:
            return None
        vr, attribute = C_STORE_RQ_ELEMENTS[element]
        if vr in _NUMBER_LAYOUTS:
            if length != _NUMBER_LAYOUTS[vr].size:
                return None
            if attribute:
                fields[attribute] = _NUMBER_LAYOUTS[vr].unpack(value)[0]
            continue
        text = value.rstrip(b"\0 ")  # as pydicom reads a UI value
        if not text or not text.isascii() or b"\\" in text:
            return None
        fields[attribute] = text.decode("ascii")
    return fields
