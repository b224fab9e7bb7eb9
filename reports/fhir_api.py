"""The read-only FHIR R4 API (contract.md "HTTP"; FHIR R4 RESTful API §3.1.0: read, search, capabilities).

GET /fhir/metadata                       CapabilityStatement
GET /fhir/{type}/{id}                    read
GET /fhir/{type}?param=value&...         search: a searchset Bundle, paged with _count / _offset

Types: Patient (identifier, name, _id), ServiceRequest (identifier, patient, status, _id),
ImagingStudy (identifier incl. urn:dicom:uid|urn:oid:..., patient, started, modality, _id),
DiagnosticReport (identifier, patient, status, date, _id). One exam (RequestedProcedure) is one
ServiceRequest, one ImagingStudy and, once signed, one DiagnosticReport, all with the exam's id.
Authentication is the JSON API's (Authorization: Token ...); every error is an OperationOutcome.
Parameters the server does not know are ignored (FHIR's lenient default) and left out of the
self link, which lists only the parameters that were applied.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Exists, Min, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from rest_framework.exceptions import APIException
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from reports import fhir
from ris.models import (
    ExamStatus,
    Patient,
    PatientIdentifier,
    PerformedStep,
    Report,
    ReportStatus,
    RequestedProcedure,
    fold_for_search,
)
from ris.timeutil import site_zone

FHIR_VERSION = "4.0.1"
DEFAULT_COUNT = 50
MAX_COUNT = 500
PAGING_PARAMETERS = {"_count", "_offset", "_format"}


class FHIRJSONRenderer(JSONRenderer):
    media_type = "application/fhir+json"
    charset = "utf-8"


class FHIRError(APIException):
    """An error answered as an OperationOutcome with the HTTP status and FHIR issue type."""

    def __init__(self, status_code: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status_code = status_code
        self.issue_code = code
        self.diagnostics = diagnostics


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


ISSUE_CODE_FOR_STATUS = {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported", 406: "not-supported"}


class FHIRView(APIView):
    renderer_classes = [FHIRJSONRenderer, JSONRenderer]

    def handle_exception(self, exc: Exception) -> Response:
        """Every error as an OperationOutcome (401 keeps its WWW-Authenticate: Token)."""
        response = super().handle_exception(exc)
        if isinstance(exc, FHIRError):
            code, text = exc.issue_code, exc.diagnostics
        else:
            code = ISSUE_CODE_FOR_STATUS.get(response.status_code, "processing")
            detail = response.data.get("detail", "") if isinstance(response.data, dict) else response.data
            text = str(detail)
        response.data = operation_outcome(code, text)
        return response


# --- Search parameters --------------------------------------------------------------------

DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
DATE_FORMATS = ((r"^\d{4}$", "%Y"), (r"^\d{4}-\d{2}$", "%Y-%m"), (r"^\d{4}-\d{2}-\d{2}$", "%Y-%m-%d"))


def date_range(value: str) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a FHIR date/dateTime search value at its precision (site time zone when none)."""
    for pattern, fmt in DATE_FORMATS:
        if re.match(pattern, value):
            start = dt.datetime.strptime(value, fmt).replace(tzinfo=site_zone())
            if fmt == "%Y":
                end = start.replace(year=start.year + 1)
            elif fmt == "%Y-%m":
                end = (start + dt.timedelta(days=32)).replace(day=1)
            else:
                end = start + dt.timedelta(days=1)
            return start, end
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FHIRError(400, "invalid", f"{value!r} is not a FHIR date or dateTime") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=site_zone())
    return moment, moment + dt.timedelta(seconds=1)


def date_filter(field: str, value: str, *, as_date: bool = False) -> Q:
    """FHIR date search (prefixes eq ne gt lt ge le sa eb) on a datetime field, or a date field."""
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    start, end = date_range(value[2:] if value[:2] in DATE_PREFIXES else value)
    if as_date:
        start, end = start.date(), max(end.date(), start.date() + dt.timedelta(days=1))
    return {
        "eq": Q(**{f"{field}__gte": start, f"{field}__lt": end}),
        "ne": ~Q(**{f"{field}__gte": start, f"{field}__lt": end}),
        "gt": Q(**{f"{field}__gte": end}),
        "sa": Q(**{f"{field}__gte": end}),
        "ge": Q(**{f"{field}__gte": start}),
        "lt": Q(**{f"{field}__lt": start}),
        "eb": Q(**{f"{field}__lt": start}),
        "le": Q(**{f"{field}__lt": end}),
    }[prefix]


def split_token(value: str) -> tuple[str | None, str]:
    """system|code (system None when no bar; "" for |code)."""
    if "|" in value:
        system, code = value.split("|", 1)
        return system, code
    return None, value


UNKNOWN_SYSTEM = "<a system this server does not issue>"


def issuer_of(system: str | None, kind: str) -> str | None:
    """The issuer an identifier system stands for (reports.fhir.system in reverse); None = any."""
    if system is None:
        return None
    if system.startswith("urn:oid:"):
        return system[len("urn:oid:") :]
    base = f"{settings.RIS_FHIR_SYSTEM_BASE}:{kind}"
    if system == base:
        return ""
    if system.startswith(base + ":"):
        from urllib.parse import unquote

        return unquote(system[len(base) + 1 :])
    return UNKNOWN_SYSTEM


def reference_id(value: str, resource_type: str) -> str:
    """The id in "Patient/12", "12" or an absolute URL ending in Patient/12."""
    value = value.rstrip("/")
    if "/" in value:
        kind, _, ident = value.rpartition("/")
        if not kind.endswith(resource_type):
            raise FHIRError(400, "invalid", f"{value!r} is not a {resource_type} reference")
        value = ident
    if not value.isdigit():
        raise FHIRError(400, "invalid", f"{resource_type} id {value!r} is not known here")
    return value


def any_of(values: str, make: Callable[[str], Q]) -> Q:
    """A comma-separated list of values is an OR (FHIR search §3.1.1.5.3)."""
    combined = Q(pk__in=[])
    for value in values.split(","):
        combined |= make(value)
    return combined


# --- Resource types ------------------------------------------------------------------------


def patient_identifier_q(value: str) -> Q:
    system, code = split_token(value)
    issuer = issuer_of(system, "patient")
    if issuer == UNKNOWN_SYSTEM:
        return Q(pk__in=[])
    own = Q(patient_id=code) if issuer is None else Q(patient_id=code, issuer=issuer)
    other = PatientIdentifier.objects.filter(patient=OuterRef("pk"), value=code)
    if issuer is not None:
        other = other.filter(issuer=issuer)
    return own | Exists(other)


def exam_identifier_q(value: str) -> Q:
    system, code = split_token(value)
    if system == fhir.DICOM_UID:
        return Q(study_instance_uid=code.removeprefix("urn:oid:"))
    if system is None:
        return (
            Q(accession_number=code)
            | Q(order__placer_order_number=code)
            | Q(order__filler_order_number=code)
            | Q(study_instance_uid=code.removeprefix("urn:oid:"))
        )
    accession = issuer_of(system, "accession")
    placer = issuer_of(system, "placer")
    filler = issuer_of(system, "filler")
    q = Q(pk__in=[])
    if accession != UNKNOWN_SYSTEM:
        q |= Q(accession_number=code, accession_issuer=accession)
    if placer != UNKNOWN_SYSTEM:
        q |= Q(order__placer_order_number=code, order__placer_issuer=placer)
    if filler != UNKNOWN_SYSTEM:
        q |= Q(order__filler_order_number=code, order__filler_issuer=filler)
    if system == fhir.system("report"):
        q |= Q(study_instance_uid=code)
    return q


def modality_q(value: str) -> Q:
    system, code = split_token(value)
    if system not in (None, "", fhir.DCM):
        return Q(pk__in=[])
    return Q(modality=code) | Q(studies__series__modality=code)


SERVICE_REQUEST_STATUSES = {
    "active": [ExamStatus.ORDERED, ExamStatus.SCHEDULED, ExamStatus.IN_PROGRESS],
    "revoked": [ExamStatus.CANCELLED, ExamStatus.DISCONTINUED],
    "completed": [
        ExamStatus.COMPLETED,
        ExamStatus.READY_FOR_READING,
        ExamStatus.PRELIMINARY,
        ExamStatus.FINAL,
        ExamStatus.AMENDED,
    ],
}
REPORT_STATUSES = {
    "preliminary": Q(latest_status=ReportStatus.PRELIMINARY),
    "final": Q(latest_status=ReportStatus.FINAL),
    "amended": Q(latest_status=ReportStatus.AMENDED, latest_amendment=""),
    "corrected": Q(latest_status=ReportStatus.AMENDED, latest_amendment="correction"),
    "appended": Q(latest_status=ReportStatus.AMENDED, latest_amendment="addendum"),
}


def exams() -> QuerySet:
    first_performed = (
        PerformedStep.objects.filter(scheduled_steps__requested_procedure=OuterRef("pk"))
        .exclude(started_at=None)
        .order_by("started_at")
        .values("started_at")[:1]
    )
    return RequestedProcedure.objects.select_related("order__patient").annotate(
        started=Coalesce(Subquery(first_performed), Min("scheduled_steps__start"))
    )


def signed_exams() -> QuerySet:
    latest = Report.objects.filter(requested_procedure=OuterRef("pk")).exclude(status=ReportStatus.DRAFT)
    latest = latest.order_by("-version")
    return (
        exams()
        .annotate(
            latest_status=Subquery(latest.values("status")[:1]),
            latest_amendment=Subquery(latest.values("amendment")[:1]),
            issued=Subquery(latest.values("signed_at")[:1]),
        )
        .annotate(effective=Coalesce("started", "issued"))
        .exclude(latest_status=None)
    )


def latest_signed(exam: RequestedProcedure) -> Report:
    return exam.reports.exclude(status=ReportStatus.DRAFT).select_related("author").order_by("-version").first()


@dataclass(frozen=True)
class ResourceType:
    name: str
    queryset: Callable[[], QuerySet]
    render: Callable[[object], dict]
    search: dict[str, Callable[[str], Q]]
    documentation: dict[str, tuple[str, str]]  # parameter -> (FHIR type, what it matches)


def status_q(mapping: dict[str, list[str]]) -> Callable[[str], Q]:
    def make(value: str) -> Q:
        return any_of(value, lambda v: Q(status__in=mapping.get(v, [])))

    return make


RESOURCE_TYPES: dict[str, ResourceType] = {
    "Patient": ResourceType(
        "Patient",
        lambda: Patient.objects.all(),
        fhir.patient_resource,
        {
            "identifier": lambda v: any_of(v, patient_identifier_q),
            "name": lambda v: any_of(v, lambda n: Q(name_search__contains=fold_for_search(n))),
            "family": lambda v: any_of(v, lambda n: Q(family_name__istartswith=n)),
            "birthdate": lambda v: date_filter("birth_date", v, as_date=True),
        },
        {
            "identifier": ("token", "Patient ID, optionally system|value (issuer)"),
            "name": ("string", "any part of the name, accents and case ignored"),
            "family": ("string", "family name, starts with"),
            "birthdate": ("date", "date of birth"),
        },
    ),
    "ServiceRequest": ResourceType(
        "ServiceRequest",
        exams,
        fhir.service_request_resource,
        {
            "identifier": lambda v: any_of(v, exam_identifier_q),
            "patient": lambda v: any_of(v, lambda p: Q(order__patient_id=reference_id(p, "Patient"))),
            "status": status_q(SERVICE_REQUEST_STATUSES),
        },
        {
            "identifier": ("token", "accession (ACSN), placer (PLAC) or filler (FILL) number"),
            "patient": ("reference", "Patient/<id>"),
            "status": ("token", "active | completed | revoked"),
        },
    ),
    "ImagingStudy": ResourceType(
        "ImagingStudy",
        exams,
        fhir.imaging_study_resource,
        {
            "identifier": lambda v: any_of(v, exam_identifier_q),
            "patient": lambda v: any_of(v, lambda p: Q(order__patient_id=reference_id(p, "Patient"))),
            "started": lambda v: date_filter("started", v),
            "modality": lambda v: any_of(v, modality_q),
        },
        {
            "identifier": ("token", "urn:dicom:uid|urn:oid:<Study Instance UID>, or the accession number"),
            "patient": ("reference", "Patient/<id>"),
            "started": ("date", "when the exam started (first MPPS, else the scheduled start)"),
            "modality": ("token", "DCM modality code, e.g. CT"),
        },
    ),
    "DiagnosticReport": ResourceType(
        "DiagnosticReport",
        signed_exams,
        lambda exam: fhir.diagnostic_report_resource(latest_signed(exam)),
        {
            "identifier": lambda v: any_of(v, exam_identifier_q),
            "patient": lambda v: any_of(v, lambda p: Q(order__patient_id=reference_id(p, "Patient"))),
            "status": lambda v: any_of(v, lambda s: REPORT_STATUSES.get(s, Q(pk__in=[]))),
            "date": lambda v: date_filter("effective", v),
            "issued": lambda v: date_filter("issued", v),
        },
        {
            "identifier": ("token", "the exam's accession number"),
            "patient": ("reference", "Patient/<id>"),
            "status": ("token", "preliminary | final | amended | corrected | appended"),
            "date": ("date", "the exam's time (effectiveDateTime)"),
            "issued": ("date", "when the report version was signed"),
        },
    ),
}


# --- Views ------------------------------------------------------------------------------


def resource_type_or_404(name: str) -> ResourceType:
    if name not in RESOURCE_TYPES:
        raise FHIRError(404, "not-supported", f"resource type {name!r} is not served here")
    return RESOURCE_TYPES[name]


class Read(FHIRView):
    """GET /fhir/{type}/{id}"""

    def get(self, request: Request, resource_type: str, resource_id: str) -> Response:
        if resource_type == "Endpoint" and settings.RIS_DICOMWEB_BASE_URL and resource_id == fhir.ENDPOINT_ID:
            return Response(fhir.endpoint_resource())
        kind = resource_type_or_404(resource_type)
        obj = kind.queryset().filter(pk=resource_id).first() if resource_id.isdigit() else None
        if obj is None:
            raise FHIRError(404, "not-found", f"{resource_type}/{resource_id} is not known")
        return Response(kind.render(obj))


class Search(FHIRView):
    """GET /fhir/{type}?params: a searchset Bundle of one page."""

    def get(self, request: Request, resource_type: str) -> Response:
        kind = resource_type_or_404(resource_type)
        rows, applied = kind.queryset(), []
        for name in request.query_params:
            if name in PAGING_PARAMETERS:
                continue
            for value in request.query_params.getlist(name):
                if name == "_id":
                    rows = rows.filter(any_of(value, lambda i: Q(pk=i) if i.isdigit() else Q(pk__in=[])))
                elif name in kind.search:
                    if value == "":
                        raise FHIRError(400, "invalid", f"search parameter {name} needs a value")
                    rows = rows.filter(kind.search[name](value))
                else:
                    continue  # unknown parameter: ignored (lenient), not in the self link
                applied.append((name, value))
        count, offset = paging(request)
        rows = rows.distinct().order_by("pk")
        total = rows.count()
        page = list(rows[offset : offset + count])
        return Response(
            searchset(request, resource_type, [kind.render(r) for r in page], total, applied, count, offset)
        )


def paging(request: Request) -> tuple[int, int]:
    try:
        count = int(request.query_params.get("_count", DEFAULT_COUNT))
        offset = int(request.query_params.get("_offset", 0))
    except ValueError:
        raise FHIRError(400, "invalid", "_count and _offset must be whole numbers") from None
    if count < 0 or offset < 0:
        raise FHIRError(400, "invalid", "_count and _offset must not be negative")
    return min(count, MAX_COUNT), offset


def searchset(request, resource_type, resources, total, applied, count, offset) -> dict:
    base = request.build_absolute_uri(request.path)

    def link(relation: str, at: int) -> dict:
        return {"relation": relation, "url": f"{base}?{urlencode([*applied, ('_count', count), ('_offset', at)])}"}

    links = [link("self", offset)]
    if offset + count < total and count:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    root = request.build_absolute_uri("/fhir/")
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {"fullUrl": f"{root}{resource_type}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ],
    }


class Metadata(FHIRView):
    """GET /fhir/metadata: what this server supports (CapabilityStatement, validated)."""

    def get(self, request: Request) -> Response:
        return Response(capability_statement(request.build_absolute_uri("/fhir")))


def capability_statement(base_url: str) -> dict:
    resources = []
    for kind in RESOURCE_TYPES.values():
        entry = {
            "type": kind.name,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [{"name": "_id", "type": "token"}]
            + [{"name": n, "type": t, "documentation": d} for n, (t, d) in kind.documentation.items()],
        }
        if settings.RIS_FHIR_PROFILES.get(kind.name):
            entry["supportedProfile"] = [settings.RIS_FHIR_PROFILES[kind.name]]
        resources.append(entry)
    if settings.RIS_DICOMWEB_BASE_URL:
        resources.append({"type": "Endpoint", "interaction": [{"code": "read"}]})
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": dt.date.today().isoformat(),
        "kind": "instance",
        "software": {"name": "RIS"},
        "implementation": {"description": "RIS read-only FHIR R4 API", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {"description": "Authorization: Token <token> (as the RIS JSON API)"},
                "resource": resources,
            }
        ],
    }
    return fhir.validate(statement)
