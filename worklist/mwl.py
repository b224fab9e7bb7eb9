"""Modality Worklist C-FIND SCP (IHE RAD-5; DICOM PS3.4 Annex K, matching per C.2.2.2).

A query identifier becomes ONE database query on indexed columns of ScheduledStep (keys on
the exam, order or patient become a sub-select of exam ids, led by their own indexes); the
rows carry their answer prepared at scheduling time (worklist.datasets), so matches stream
out as they are read and are encoded straight to bytes.
Only steps in RIS_MWL_VISIBLE_STATUSES with a start time are visible: a cancelled,
discontinued or completed step is gone from the next query, nothing to wait for.

Statuses (PS3.4 K.4.1.1.4): FF00 per match; FF01 when the identifier carried an optional
key we do not match on (ignored for matching, still returned); A900 for an identifier that
is not a worklist identifier (Query/Retrieve Level, several SPS items); C000 for values no
matching type accepts (bad date, time, UID, character set), each with an Error Comment
naming the attribute; A700 when the database cannot answer; FE00 when the SCU sends C-CANCEL.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.db.models import CharField, Func, Lookup, Q, QuerySet
from django.db.models.functions import TruncTime, Upper
from pydicom import charset as dicom_charset
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config, dimse_messages, evt, fsm, service_class
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import ModalityWorklistInformationFind

from ris.models import RequestedProcedure, ScheduledStep
from ris.timeutil import site_zone
from worklist import matching
from worklist.datasets import PreparedResponse, ResponseBuilder, encode_command_set, requested_fields
from worklist.models import AnswerCharacterSet, Modality

log = logging.getLogger(__name__)

STATUS_PENDING = 0xFF00
STATUS_PENDING_WARNING_OPTIONAL_KEYS_NOT_SUPPORTED = 0xFF01
STATUS_CANCEL = 0xFE00
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_UNABLE_TO_PROCESS = 0xC000

QUERY_RETRIEVE_LEVEL = 0x00080052
SPS_SEQUENCE = "ScheduledProcedureStepSequence"

# Columns of the request side, relative to RequestedProcedure (the exam): matched in a subquery.
EXAM = ""
ORDER = "order__"
PATIENT = "order__patient__"


@CharField.register_lookup
class DicomWildcard(Lookup):
    """`field__dicom_wildcard=pattern`: PS3.4 wildcard matching in SQL, case-sensitive
    (SQLite GLOB, else LIKE with escapes; PostgreSQL LIKE is case-sensitive)."""

    lookup_name = "dicom_wildcard"

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        if connection.vendor == "sqlite":
            return f"{lhs} GLOB %s", [*lhs_params, matching.wildcard_to_glob(self.rhs)]
        return f"{lhs} LIKE %s ESCAPE '\\'", [*lhs_params, matching.wildcard_to_like(self.rhs)]


class Unindexed(Func):
    """A column the SQLite planner may not use an index for (unary +, its documented hint);
    the plain column elsewhere (PostgreSQL plans from statistics)."""

    template = "%(expressions)s"

    def as_sqlite(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection, template="+%(expressions)s", **extra)


class QueryFailure(Exception):
    """A query we answer with a failure status and an Error Comment (bad identifier, or a
    database that cannot answer)."""

    def __init__(self, status: int, comment: str, keyword: str = "") -> None:
        super().__init__(comment)
        self.status, self.comment, self.keyword = status, comment, keyword

    def as_status(self) -> Dataset:
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = self.comment[:64]  # LO
        if self.keyword and tag_for_keyword(self.keyword):
            ds.OffendingElement = [tag_for_keyword(self.keyword)]
        return ds


# Matching keys (K.6-1 plus the Type 3 keys we also match): keyword -> (column, kind).
# Kinds: "string" single value / wildcard / list; "pn" case-insensitive person name;
# "patient_name" the folded name column; "uid" list of UIDs; "date" DA range.
TOP_LEVEL_KEYS: dict[str, tuple[str, str]] = {
    "PatientName": (PATIENT + "name_search", "patient_name"),
    "PatientID": (PATIENT + "patient_id", "string"),
    "IssuerOfPatientID": (PATIENT + "issuer", "string"),
    "PatientBirthDate": (PATIENT + "birth_date", "date"),
    "PatientSex": (PATIENT + "sex", "string"),
    "AccessionNumber": (EXAM + "accession_number", "string"),
    "RequestedProcedureID": (EXAM + "requested_procedure_id", "string"),
    "RequestedProcedureDescription": (EXAM + "procedure_description", "string"),
    "StudyInstanceUID": (EXAM + "study_instance_uid", "uid"),
    "AdmissionID": (ORDER + "admission_id", "string"),
    "CurrentPatientLocation": (ORDER + "patient_location", "string"),
    "ReferringPhysicianName": (ORDER + "referring_physician", "pn"),
    "RequestingPhysician": (ORDER + "ordering_physician", "pn"),
    "RequestedProcedurePriority": (ORDER + "priority", "string"),
    "PlacerOrderNumberImagingServiceRequest": (ORDER + "placer_order_number", "string"),
    "FillerOrderNumberImagingServiceRequest": (ORDER + "filler_order_number", "string"),
}
SPS_KEYS: dict[str, tuple[str, str]] = {
    "ScheduledStationAETitle": ("station_ae_title", "string"),
    "Modality": ("modality", "string"),
    "ScheduledPerformingPhysicianName": ("performing_physician", "pn"),
    "ScheduledProcedureStepID": ("sps_id", "string"),
    "ScheduledProcedureStepDescription": ("description", "string"),
    "ScheduledStationName": ("station_name", "string"),
    "ScheduledProcedureStepLocation": ("location", "string"),
    "ScheduledProcedureStepStatus": ("status", "string"),
}
SPS_START_DATE, SPS_START_TIME = "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"
# Sequence matching inside the Issuer of Accession Number Sequence (one item).
ACCESSION_ISSUER = ("IssuerOfAccessionNumberSequence", "LocalNamespaceEntityID", EXAM + "accession_issuer")


@dataclass
class WorklistQuery:
    """An identifier translated: SQL conditions, a Python re-check of the SQL candidates (only
    for "exact" PN mode), and whether an optional key was ignored (FF01)."""

    conditions: list[Q] = field(default_factory=list)  # on ScheduledStep
    request_conditions: list[Q] = field(default_factory=list)  # on RequestedProcedure
    time_of_day: tuple[dt.time | None, dt.time | None] | None = None
    recheck: list[Callable[[dict], bool]] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    annotations: dict[str, Upper] = field(default_factory=dict)
    request_annotations: dict[str, Upper] = field(default_factory=dict)
    # Plan hint: a start range (the usual console query: station or modality + a day).
    has_start_range: bool = False

    def queryset(self) -> QuerySet:
        # Steps without a start time have no prepared answer (mwl_dataset NULL): not listed.
        qs = ScheduledStep.objects.filter(mwl_dataset__isnull=False)
        if self.request_conditions:
            exams = RequestedProcedure.objects.annotate(**self.request_annotations)
            for condition in self.request_conditions:
                exams = exams.filter(condition)
            qs = qs.filter(requested_procedure__in=exams.values("pk"))
        if self.request_conditions and not self.has_start_range:
            # Lead with the patient/exam side: keep the status test out of index choice, or
            # SQLite (no statistics) walks the (status, start) index over every visible step.
            qs = qs.annotate(status_unindexed=Unindexed("status", output_field=CharField()))
            qs = qs.filter(status_unindexed__in=settings.RIS_MWL_VISIBLE_STATUSES)
        else:
            qs = qs.filter(status__in=settings.RIS_MWL_VISIBLE_STATUSES)
        if self.annotations:
            qs = qs.annotate(**self.annotations)
        if self.time_of_day is not None:
            low, high = self.time_of_day
            qs = qs.annotate(local_time=TruncTime("start", tzinfo=site_zone()))
            qs = qs.filter(local_time__gte=low) if low else qs
            qs = qs.filter(local_time__lte=high) if high else qs
        for condition in self.conditions:
            qs = qs.filter(condition)
        return qs.order_by("start", "pk")

    def status(self) -> int:
        return STATUS_PENDING_WARNING_OPTIONAL_KEYS_NOT_SUPPORTED if self.unsupported else STATUS_PENDING


def value_of(ds: Dataset, keyword: str) -> str | None:
    """A key's value as one string ('a\\b' for several), None when absent; '' = universal."""
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def is_empty(value) -> bool:
    if value is None or value == "" or value == b"":
        return True
    if isinstance(value, (list, tuple)) or type(value).__name__ in ("MultiValue", "Sequence"):
        return all((isinstance(v, Dataset) and dataset_is_empty(v)) or v in ("", None) for v in value)
    return False


def dataset_is_empty(ds: Dataset) -> bool:
    return all(is_empty(elem.value) for elem in ds)


def string_condition(column: str, value: str, vr: str, *, case_insensitive: bool = False) -> Q:
    """Single value, wildcard, or a backslash list of either (C.2.2.2.1, .4, .8)."""
    condition = Q()
    for part in value.split("\\"):
        if case_insensitive:
            part = part.upper()
        if matching.has_wildcard(part, vr):
            target = f"{column}__dicom_wildcard" if not case_insensitive else f"{column}_upper__dicom_wildcard"
            condition |= Q(**{target: part}) & ~Q(**{column: ""}) & prefix_range(column, part, case_insensitive)
        else:  # a non-empty value cannot equal an empty one: no extra test needed
            condition |= Q(**{f"{column}__iexact" if case_insensitive else column: part})
    return condition


def prefix_range(column: str, pattern: str, case_insensitive: bool) -> Q:
    """For 'ABC*...' also `ABC <= column < ABD`, a range SQLite can take from an index (it will
    not for GLOB with a bound parameter). Only on SQLite, whose BINARY collation orders by
    code point; a linguistic collation (PostgreSQL) need not keep prefixes together."""
    prefix = re.split(r"[*?]", pattern, maxsplit=1)[0]
    if not prefix or case_insensitive or connection.vendor != "sqlite":
        return Q()
    return Q(**{f"{column}__gte": prefix, f"{column}__lt": prefix[:-1] + chr(ord(prefix[-1]) + 1)})


def add_key(query: WorklistQuery, value: str, column: str, kind: str, vr: str, *, request: bool) -> None:
    """One matching key: `request` says the column is on the exam side (RequestedProcedure)."""
    conditions = query.request_conditions if request else query.conditions
    if kind == "uid":
        conditions.append(Q(**{f"{column}__in": matching.parse_uid_list(value)}))
    elif kind == "date":
        low, high = matching.parse_date_range(value)
        conditions.append(
            Q(**({f"{column}__gte": low} if low else {})) & Q(**({f"{column}__lte": high} if high else {}))
        )
    elif kind == "patient_name":
        add_patient_name(query, value)
    elif kind == "pn":
        conditions.append(string_condition(column, matching.alphabetic_group(value), "PN", case_insensitive=True))
        (query.request_annotations if request else query.annotations)[f"{column}_upper"] = Upper(column)
    else:
        conditions.append(string_condition(column, value, vr))


def add_patient_name(query: WorklistQuery, value: str) -> None:
    """PN matching on the folded name (case- and accent-insensitive). In "exact" mode the SQL
    result is a superset, re-checked literally against each candidate's stored name."""
    folded = "\\".join(matching.fold_pn(part) for part in value.split("\\"))
    query.request_conditions.append(string_condition(PATIENT + "name_search", folded, "PN"))
    if settings.RIS_MWL_PN_MATCHING == "exact":
        parts = [matching.alphabetic_group(p) for p in value.split("\\")]

        def literal(stored: dict) -> bool:
            names = stored.get("00100010", {}).get("Value") or [{}]
            name = matching.alphabetic_group(names[0].get("Alphabetic", ""))
            return any(matching.wildcard_matches(name, p) for p in parts)

        query.recheck.append(literal)


def translate(identifier: Dataset, station: Modality | None) -> WorklistQuery:
    """The worklist query of an identifier, or QueryFailure."""
    if QUERY_RETRIEVE_LEVEL in identifier:
        raise QueryFailure(
            STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "Query/Retrieve Level is not allowed in a worklist query",
            "QueryRetrieveLevel",
        )
    check_character_set(identifier)
    query = WorklistQuery()
    for elem in identifier:
        keyword = elem.keyword
        if keyword in ("SpecificCharacterSet", SPS_SEQUENCE) or elem.tag.element == 0:
            continue
        if keyword == ACCESSION_ISSUER[0]:
            add_accession_issuer(query, elem)
        elif keyword in TOP_LEVEL_KEYS:
            value = value_of(identifier, keyword)
            if not matching.is_universal(value):
                try:
                    add_key(query, value, *TOP_LEVEL_KEYS[keyword], elem.VR, request=True)
                except matching.InvalidMatchingValue as exc:
                    raise QueryFailure(STATUS_UNABLE_TO_PROCESS, f"{keyword}: {exc}", keyword) from None
        elif not is_empty(elem.value):
            query.unsupported.append(keyword or str(elem.tag))
    sps = scheduled_step_item(identifier)
    add_scheduled_step_keys(query, sps, station)
    return query


def check_character_set(identifier: Dataset) -> None:
    """The query is decoded by its own Specific Character Set (PS3.5 6.1.2.5); a term we cannot
    decode is refused rather than guessed."""
    terms = identifier.get("SpecificCharacterSet") or []
    for term in [terms] if isinstance(terms, str) else terms:
        if term and term.strip() not in dicom_charset.python_encoding:
            raise QueryFailure(
                STATUS_UNABLE_TO_PROCESS, f"unsupported Specific Character Set {term!r}", "SpecificCharacterSet"
            )
    try:
        for elem in identifier:  # force decoding now, so a bad byte is answered, not crashed on
            elem.value  # noqa: B018
    except (UnicodeDecodeError, LookupError) as exc:
        raise QueryFailure(STATUS_UNABLE_TO_PROCESS, f"query text cannot be decoded: {exc}") from None


def scheduled_step_item(identifier: Dataset) -> Dataset | None:
    if SPS_SEQUENCE not in identifier:
        return None
    elem = identifier[SPS_SEQUENCE]
    if elem.VR != "SQ":
        raise QueryFailure(
            STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "Scheduled Procedure Step Sequence is not a sequence",
            SPS_SEQUENCE,
        )
    if len(elem.value) > 1:
        raise QueryFailure(
            STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "Scheduled Procedure Step Sequence must hold one item",
            SPS_SEQUENCE,
        )
    return elem.value[0] if elem.value else None


def add_scheduled_step_keys(query: WorklistQuery, sps: Dataset | None, station: Modality | None) -> None:
    """Sequence matching (C.2.2.2.6): every key of the one SPS item matches the same step."""
    sps = sps if sps is not None else Dataset()
    for elem in sps:
        keyword = elem.keyword
        if keyword in (SPS_START_DATE, SPS_START_TIME) or elem.tag.element == 0:
            continue
        if keyword in SPS_KEYS:
            value = value_of(sps, keyword)
            if not matching.is_universal(value):
                add_key(query, value, *SPS_KEYS[keyword], elem.VR, request=False)
        elif not is_empty(elem.value):
            query.unsupported.append(keyword or str(elem.tag))
    station_value = value_of(sps, "ScheduledStationAETitle")
    if station is not None and station.station_from_calling_ae and matching.is_universal(station_value):
        query.conditions.append(Q(station_ae_title__in=station.station_ae_titles))
    add_start_keys(query, value_of(sps, SPS_START_DATE) or "", value_of(sps, SPS_START_TIME) or "")


def add_start_keys(query: WorklistQuery, date_value: str, time_value: str) -> None:
    """SPS Start Date and Time: one combined date-time range (C.2.2.2.5.1), or a time-of-day
    range on every day when only the time is given."""
    try:
        if not matching.is_universal(date_value):
            low, high = matching.combined_datetime_range(date_value, time_value, site_zone())
            query.has_start_range = True
            query.conditions.append(
                Q(**({"start__gte": low} if low else {})) & Q(**({"start__lte": high} if high else {}))
            )
        elif not matching.is_universal(time_value):
            query.time_of_day = matching.parse_time_range(time_value)
    except matching.InvalidMatchingValue as exc:
        keyword = SPS_START_TIME if "time" in str(exc) else SPS_START_DATE
        raise QueryFailure(STATUS_UNABLE_TO_PROCESS, f"{keyword}: {exc}", keyword) from None


def add_accession_issuer(query: WorklistQuery, elem) -> None:
    items = elem.value if elem.VR == "SQ" else []
    if not items:
        return
    value = value_of(items[0], ACCESSION_ISSUER[1])
    if not matching.is_universal(value):
        query.request_conditions.append(string_condition(ACCESSION_ISSUER[2], value, "UT"))
    others = [e for e in items[0] if e.keyword != ACCESSION_ISSUER[1] and not is_empty(e.value)]
    if others:
        query.unsupported.append(ACCESSION_ISSUER[0])


def matches(query: WorklistQuery) -> Iterator[dict]:
    """The prepared answers of the matching steps, in start order, read in chunks."""
    qs = query.queryset()
    rows = qs.values_list("mwl_dataset", flat=True).iterator(chunk_size=200)
    for stored in rows:
        if all(check(stored) for check in query.recheck):
            yield stored


def calling_station(event: evt.Event) -> Modality | None:
    calling = event.assoc.requestor.ae_title.strip()
    return Modality.for_calling_ae(calling)


def handle_find(event: evt.Event):
    """EVT_C_FIND for the Modality Worklist Information Model (a generator of responses)."""
    close_old_connections()
    try:
        try:
            identifier = event.identifier
        except Exception as exc:  # an identifier pydicom cannot even parse
            log.warning("worklist query could not be read: %s", exc)
            yield QueryFailure(STATUS_UNABLE_TO_PROCESS, f"identifier cannot be decoded: {exc}").as_status(), None
            return
        try:
            station = calling_station(event)
            query = translate(identifier, station)
        except QueryFailure as exc:
            log.info("worklist query refused: %s", exc.comment)
            yield exc.as_status(), None
            return
        charset = station.answer_character_set if station else AnswerCharacterSet.UTF8
        builder = ResponseBuilder(requested_fields(identifier), charset)
        status = query.status()
        if query.unsupported:
            log.info("worklist query: optional keys ignored for matching: %s", ", ".join(query.unsupported))
        for stored in matches(query):
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            yield status, PreparedResponse(builder, stored)
    except DatabaseError as exc:  # locked, gone, timed out: say so, the listener carries on
        log.error("worklist query failed in the database: %s", exc)
        yield QueryFailure(STATUS_OUT_OF_RESOURCES, f"database unavailable: {exc}").as_status(), None
    finally:
        close_old_connections()


def encode_prepared(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False):
    """pynetdicom's identifier encoder, with a fast path for our prepared worklist answers;
    every other dataset (and any other transfer syntax) goes through pydicom as before."""
    if isinstance(ds, PreparedResponse):
        if is_little_endian and not deflated:
            return ds.encode_identifier(is_implicit_vr)
        ds = ds.dataset()
    return PYDICOM_ENCODE(ds, is_implicit_vr, is_little_endian, deflated)


def encode_command(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False):
    """pynetdicom's command set encoder (always Implicit VR Little Endian), done directly."""
    if is_implicit_vr and is_little_endian and not deflated:
        try:
            return encode_command_set(ds)
        except (ValueError, UnicodeEncodeError, struct.error):
            pass
    return PYDICOM_ENCODE(ds, is_implicit_vr, is_little_endian, deflated)


PYDICOM_ENCODE = getattr(service_class.encode, "pydicom_encode", service_class.encode)
encode_prepared.pydicom_encode = PYDICOM_ENCODE


def copy_presentation_context(context: PresentationContext, memo: dict) -> PresentationContext:
    duplicate = copy.copy(context)
    duplicate._transfer_syntax = list(context._transfer_syntax)
    return duplicate


def close_before_request(dul) -> str:
    """AA-5 (PS3.8 Sta2 + Evt17: the peer closed before sending A-ASSOCIATE-RQ), and wake the
    acceptor thread: pynetdicom would otherwise wait out the ACSE timeout (30 s) and count the
    dead connection against the association limit, so every TCP health probe or port scan
    would hold a slot for that long."""
    next_state = PYNETDICOM_AA_5(dul)
    dul.to_user_queue.put(None)  # read by the acceptor as "no A-ASSOCIATE-RQ": it stops
    return next_state


PYNETDICOM_AA_5 = getattr(fsm.ACTIONS["AA-5"][1], "pynetdicom_action", fsm.ACTIONS["AA-5"][1])
close_before_request.pynetdicom_action = PYNETDICOM_AA_5


def register(ae) -> list[tuple]:
    """Modality Worklist Information Model - FIND (1.2.840.10008.5.1.4.31)."""
    ae.add_supported_context(ModalityWorklistInformationFind)
    # The identifiers are logged at debug level by us when needed; pynetdicom would decode
    # and pretty-print every request and response otherwise.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    service_class.encode = encode_prepared
    fsm.ACTIONS["AA-5"] = (fsm.ACTIONS["AA-5"][0], close_before_request, fsm.ACTIONS["AA-5"][2])
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        # pynetdicom's standard event handlers format a log line per PDU and DIMSE message,
        # which this logger level drops anyway: ~15 % of a worklist answer's CPU time.
        _config.LOG_HANDLER_LEVEL = "none"
    dimse_messages.encode = encode_command
    # pynetdicom deep-copies every supported presentation context for each association; with
    # the Storage SOP classes that is ~170 contexts and ~27 ms, most of it re-validating UIDs.
    # UIDs are immutable strings and a context's only mutable part is its list of transfer
    # syntaxes, so a copy may share the rest (under 1 ms).
    copy._deepcopy_dispatch[UID] = copy._deepcopy_atomic
    copy._deepcopy_dispatch[PresentationContext] = copy_presentation_context
    return [(evt.EVT_C_FIND, handle_find)]
