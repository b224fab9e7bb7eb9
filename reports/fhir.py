"""FHIR R4 resources of an exam: Patient, ServiceRequest, ImagingStudy (+ Endpoint), DiagnosticReport,
and the transaction Bundle that delivers them (swf-spec §9).

Every resource is validated with the fhir.resources R4B models before it leaves (R4B keeps R4's
shapes for these resources). The same builders serve the read-only API (references like
"Patient/12") and the outbound Bundle (references to the entries' urn:uuid fullUrls, each entry a
conditional update on a business identifier, so a re-delivered Bundle updates instead of
duplicating).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable
from urllib.parse import quote

from django.conf import settings

from reports.oru import exam_started_at
from ris.models import ExamStatus, Instance, Patient, Report, ReportStatus, RequestedProcedure, Series
from ris.timeutil import to_local

DCM = "http://dicom.nema.org/resources/ontology/DCM"
LOINC = "http://loinc.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
ENDPOINT_CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
DICOM_UID = "urn:dicom:uid"
RFC3986 = "urn:ietf:rfc:3986"
LOINC_IMAGING_STUDY = ("18748-4", "Diagnostic imaging study")
OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
# A fixed namespace: the same exam always gets the same entry fullUrl in every Bundle.
BUNDLE_NAMESPACE = uuid.UUID("8f1d9f52-6a0e-4d0b-9a43-3c3c2f7f0a61")

SERVICE_REQUEST_STATUS = {
    ExamStatus.ORDERED: "active",
    ExamStatus.SCHEDULED: "active",
    ExamStatus.IN_PROGRESS: "active",
    ExamStatus.CANCELLED: "revoked",
    ExamStatus.DISCONTINUED: "revoked",
}
IMAGING_STUDY_STATUS = {ExamStatus.CANCELLED: "cancelled"}

Reference = Callable[[str, object], dict]


ENDPOINT_ID = "dicomweb"


def local_reference(resource_type: str, obj) -> dict:
    """References of the read-only API: ResourceType/<primary key>. The interpreter is named by
    identifier (the API serves no Practitioner); the DICOMweb Endpoint has one fixed id."""
    if resource_type == "Practitioner":
        return {}
    if resource_type == "Endpoint":
        return {"reference": f"Endpoint/{ENDPOINT_ID}"}
    return {"reference": f"{resource_type}/{obj.pk}"}


def system(kind: str, issuer: str = "") -> str:
    """An identifier system: urn:oid:<issuer> when the issuer is an OID, else under RIS_FHIR_SYSTEM_BASE."""
    if issuer and OID.match(issuer):
        return f"urn:oid:{issuer}"
    base = settings.RIS_FHIR_SYSTEM_BASE
    return f"{base}:{kind}:{quote(issuer, safe='')}" if issuer else f"{base}:{kind}"


def identifier(kind: str, value: str, issuer: str = "", type_code: str = "") -> dict:
    result = {"system": system(kind, issuer), "value": value}
    if type_code:
        result = {"type": {"coding": [{"system": V2_0203, "code": type_code}]}, **result}
    return result


def instant(moment) -> str | None:
    local = to_local(moment)
    return local.isoformat(timespec="seconds") if local else None


def with_meta(resource: dict) -> dict:
    profile = settings.RIS_FHIR_PROFILES.get(resource["resourceType"])
    if profile:
        resource["meta"] = {"profile": [profile]}
    return resource


def validate(resource: dict) -> dict:
    """Check a resource against its fhir.resources R4B model; raise pydantic.ValidationError if not valid."""
    # Imported on first use: fhir.resources and pydantic cost ~20 MB, and only the processes that
    # render or serve FHIR (worker, web) ever validate; MLLP, DICOM and beat never do.
    from fhir.resources.R4B import get_fhir_model_class

    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resource


def drop_empty(resource: dict) -> dict:
    """FHIR forbids empty strings, lists and objects: leave such elements out."""
    cleaned = {}
    for key, value in resource.items():
        if isinstance(value, dict):
            value = drop_empty(value)
        elif isinstance(value, list):
            value = [drop_empty(v) if isinstance(v, dict) else v for v in value]
            value = [v for v in value if v not in ("", None, {}, [])]
        if value not in ("", None, {}, []):
            cleaned[key] = value
    return cleaned


def finish(resource: dict) -> dict:
    return validate(with_meta(drop_empty(resource)))


# --- Resources -------------------------------------------------------------------------


def patient_identifier(patient: Patient) -> dict:
    return identifier("patient", patient.patient_id, patient.issuer, "MR")


def patient_resource(patient: Patient) -> dict:
    name = {
        "family": patient.family_name,
        "given": [g for g in (patient.given_name, patient.middle_name) if g],
        "prefix": [patient.name_prefix] if patient.name_prefix else [],
        "suffix": [patient.name_suffix] if patient.name_suffix else [],
        "text": patient.display_name,
    }
    gender = {"M": "male", "F": "female", "O": "other"}.get(patient.sex, "unknown")
    return finish(
        {
            "resourceType": "Patient",
            "id": str(patient.pk),
            "identifier": [patient_identifier(patient)],
            "active": patient.merged_into_id is None,
            "name": [name],
            "gender": gender,
            "birthDate": patient.birth_date.isoformat() if patient.birth_date else None,
        }
    )


def accession_identifier(exam: RequestedProcedure) -> dict:
    return identifier("accession", exam.accession_number, exam.accession_issuer, "ACSN")


def study_identifier(exam: RequestedProcedure) -> dict:
    return {"system": DICOM_UID, "value": f"urn:oid:{exam.study_instance_uid}"}


def procedure_code(exam: RequestedProcedure) -> dict:
    coding = []
    if exam.procedure_code:
        scheme = exam.procedure_code_scheme or "L"
        coding.append({"system": system("procedure", scheme), "code": exam.procedure_code})
        if exam.procedure_description:
            coding[0]["display"] = exam.procedure_description
    return {"coding": coding, "text": exam.procedure_description or exam.procedure_code or exam.modality}


def service_request_resource(exam: RequestedProcedure, ref: Reference = local_reference) -> dict:
    order = exam.order
    identifiers = [accession_identifier(exam)]
    if order.placer_order_number:
        identifiers.append(identifier("placer", order.placer_order_number, order.placer_issuer, "PLAC"))
    identifiers.append(identifier("filler", order.filler_order_number, order.filler_issuer, "FILL"))
    start = exam.scheduled_steps.exclude(start=None).order_by("start").values_list("start", flat=True).first()
    return finish(
        {
            "resourceType": "ServiceRequest",
            "id": str(exam.pk),
            "identifier": identifiers,
            "status": SERVICE_REQUEST_STATUS.get(exam.status, "completed"),
            "intent": "order",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}]}],
            "priority": {"STAT": "stat", "HIGH": "urgent"}.get(order.priority, "routine"),
            "code": procedure_code(exam),
            "subject": ref("Patient", order.patient),
            "occurrenceDateTime": instant(start),
            "authoredOn": instant(order.created_at),
            "requester": {"display": order.ordering_physician.replace("^", " ").strip()},
            "reasonCode": [{"text": order.reason}] if order.reason else [],
        }
    )


def arrived_series(exam: RequestedProcedure) -> list[Series]:
    return list(
        Series.objects.filter(study__study_instance_uid=exam.study_instance_uid)
        .order_by("series_number", "id")
        .prefetch_related("instances")
    )


def imaging_study_resource(exam: RequestedProcedure, ref: Reference = local_reference) -> dict:
    """What arrived for the exam (C-STORE or IAN), series by series; instances whose SOP Class
    is unknown cannot be listed (sopClass is required) and are only counted in the series."""
    series_list = arrived_series(exam)
    series_json, modalities, instance_count = [], [], 0
    for series in series_list:
        modality = series.modality or exam.modality
        if modality and modality not in modalities:
            modalities.append(modality)
        instances = sorted(series.instances.all(), key=lambda i: (i.instance_number or 0, i.pk))
        instance_count += len(instances)
        series_json.append(
            {
                "uid": series.series_instance_uid,
                "number": series.series_number,
                "modality": {"system": DCM, "code": modality or "OT"},
                "description": series.description,
                "numberOfInstances": len(instances),
                "endpoint": [ref("Endpoint", None)] if settings.RIS_DICOMWEB_BASE_URL else [],
                "instance": [instance_json(i) for i in instances if i.sop_class_uid],
            }
        )
    if not modalities and exam.modality:
        modalities.append(exam.modality)
    status = IMAGING_STUDY_STATUS.get(exam.status, "available" if instance_count else "registered")
    return finish(
        {
            "resourceType": "ImagingStudy",
            "id": str(exam.pk),
            "identifier": [study_identifier(exam), accession_identifier(exam)],
            "status": status,
            "modality": [{"system": DCM, "code": m} for m in modalities],
            "subject": ref("Patient", exam.order.patient),
            "started": instant(exam_started_at(exam)),
            "basedOn": [ref("ServiceRequest", exam)],
            "endpoint": [ref("Endpoint", None)] if settings.RIS_DICOMWEB_BASE_URL else [],
            "numberOfSeries": len(series_list),
            "numberOfInstances": instance_count,
            "procedureCode": [procedure_code(exam)],
            "description": exam.procedure_description,
            "series": series_json,
        }
    )


def instance_json(instance: Instance) -> dict:
    return {
        "uid": instance.sop_instance_uid,
        "number": instance.instance_number,
        "sopClass": {"system": RFC3986, "code": f"urn:oid:{instance.sop_class_uid}"},
    }


def endpoint_resource() -> dict:
    """The DICOMweb (WADO-RS) service where the images can be fetched (R4 Endpoint shape)."""
    return finish(
        {
            "resourceType": "Endpoint",
            "id": ENDPOINT_ID,
            "identifier": [{"system": system("endpoint"), "value": ENDPOINT_ID}],
            "status": "active",
            "connectionType": {"system": ENDPOINT_CONNECTION_TYPE, "code": "dicom-wado-rs"},
            "name": "DICOMweb WADO-RS",
            "payloadType": [{"text": "DICOM WADO-RS"}],
            "payloadMimeType": ["application/dicom"],
            "address": settings.RIS_DICOMWEB_BASE_URL,
        }
    )


def report_status(report: Report) -> str:
    """OBR-25 → DiagnosticReport.status: P preliminary, F final, C corrected; an addendum is appended."""
    if report.status == ReportStatus.AMENDED:
        return {"addendum": "appended", "correction": "corrected"}.get(report.amendment, "amended")
    return {ReportStatus.PRELIMINARY: "preliminary", ReportStatus.FINAL: "final"}.get(report.status, "partial")


def report_identifier(exam: RequestedProcedure) -> dict:
    """One DiagnosticReport per exam; each signed version updates it (status, text)."""
    return {"system": system("report"), "value": exam.study_instance_uid}


def report_text(report: Report) -> str:
    parts = []
    if report.findings.strip():
        parts.append(f"Findings:\n{report.findings.strip()}")
    if report.impression.strip():
        parts.append(f"Impression:\n{report.impression.strip()}")
    return "\n\n".join(parts) + "\n"


def interpreter_identifier(report: Report) -> dict:
    return {"system": system("practitioner"), "value": report.author.get_username()}


def interpreter_name(report: Report) -> str:
    user = report.author
    return user.get_full_name() or user.get_username()


def practitioner_resource(report: Report) -> dict:
    user = report.author
    name = {
        "family": user.last_name,
        "given": [user.first_name] if user.first_name else [],
        "text": interpreter_name(report),
    }
    return finish(
        {"resourceType": "Practitioner", "identifier": [interpreter_identifier(report)], "active": True, "name": [name]}
    )


def diagnostic_report_resource(report: Report, ref: Reference = local_reference) -> dict:
    exam = report.requested_procedure
    interpreter = ref("Practitioner", report)
    if "reference" not in interpreter:
        interpreter = {"identifier": interpreter_identifier(report), "display": interpreter_name(report)}
    text = report_text(report)
    code = procedure_code(exam)
    code["coding"] = [{"system": LOINC, "code": LOINC_IMAGING_STUDY[0], "display": LOINC_IMAGING_STUDY[1]}] + code[
        "coding"
    ]
    return finish(
        {
            "resourceType": "DiagnosticReport",
            "id": str(exam.pk),
            "identifier": [report_identifier(exam), accession_identifier(exam)],
            "basedOn": [ref("ServiceRequest", exam)],
            "status": report_status(report),
            "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
            "code": code,
            "subject": ref("Patient", exam.order.patient),
            "effectiveDateTime": instant(exam_started_at(exam) or report.signed_at),
            "issued": instant(report.signed_at),
            "resultsInterpreter": [interpreter],
            "imagingStudy": [ref("ImagingStudy", exam)],
            "conclusion": report.impression.strip(),
            "presentedForm": [
                {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                    "title": f"Report v{report.version}",
                    "creation": instant(report.signed_at),
                }
            ],
        }
    )


# --- The outbound transaction Bundle ---------------------------------------------------


def conditional_url(resource_type: str, ident: dict) -> str:
    return f"{resource_type}?identifier={quote(ident['system'] + '|' + ident['value'], safe=':/')}"


def full_url(resource_type: str, ident: dict) -> str:
    return f"urn:uuid:{uuid.uuid5(BUNDLE_NAMESPACE, resource_type + '|' + ident['system'] + '|' + ident['value'])}"


def build_transaction_bundle(report: Report, bundle_id: str) -> dict:
    """Patient, ServiceRequest, ImagingStudy, Practitioner, [Endpoint], DiagnosticReport as one
    transaction: each entry a conditional update (PUT Type?identifier=system|value), so the
    receiver creates it once and updates it on every later version or re-delivery."""
    exam = report.requested_procedure
    keys = {
        "Patient": patient_identifier(exam.order.patient),
        "ServiceRequest": accession_identifier(exam),
        "ImagingStudy": study_identifier(exam),
        "Practitioner": interpreter_identifier(report),
        "DiagnosticReport": report_identifier(exam),
    }
    if settings.RIS_DICOMWEB_BASE_URL:
        keys["Endpoint"] = {"system": system("endpoint"), "value": ENDPOINT_ID}

    def ref(resource_type: str, _obj) -> dict:
        return {"reference": full_url(resource_type, keys[resource_type])}

    resources = [
        patient_resource(exam.order.patient),
        service_request_resource(exam, ref),
        practitioner_resource(report),
    ]
    if settings.RIS_DICOMWEB_BASE_URL:
        resources.append(endpoint_resource())
    resources += [imaging_study_resource(exam, ref), diagnostic_report_resource(report, ref)]
    entries = []
    for resource in resources:
        resource_type = resource["resourceType"]
        resource.pop("id", None)  # the receiver keeps its own ids; we match on identifiers
        entries.append(
            {
                "fullUrl": full_url(resource_type, keys[resource_type]),
                "resource": resource,
                "request": {"method": "PUT", "url": conditional_url(resource_type, keys[resource_type])},
            }
        )
    bundle = {
        "resourceType": "Bundle",
        "id": bundle_id,
        "identifier": {"system": system("bundle"), "value": bundle_id},
        "type": "transaction",
        "entry": entries,
    }
    return validate(bundle)


def render_fhir(message) -> str:
    """Outbox renderer for destination "fhir": the Bundle is fixed when the report is signed."""
    return json.dumps(build_transaction_bundle(message.report, message.message_control_id), ensure_ascii=False)
