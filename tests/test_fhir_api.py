"""The read-only FHIR R4 API over HTTP: gunicorn serving ris.wsgi in a subprocess, asked with
urllib as any FHIR client would; every answer is validated with the fhir.resources R4B models."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fhir.resources.R4B import get_fhir_model_class
from rest_framework.authtoken.models import Token

from ris import workflow
from tests.conftest import database_url_of_test_db, free_port, running
from tests.test_reports_helpers import module_env, radiologist, ready_exam, user_with_role

pytestmark = pytest.mark.live

DICOMWEB = "http://pacs.example.org/dicom-web"
VN_CORE_PATIENT = "http://fhir.hl7.org.vn/core/StructureDefinition/vn-core-patient"


@pytest.fixture(scope="module")
def fhir_server(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[str]:
    with django_db_blocker.unblock():
        url = database_url_of_test_db()
    tmp = tmp_path_factory.mktemp("fhirapi")
    port = free_port()
    env = module_env(
        url,
        tmp,
        RIS_DICOMWEB_BASE_URL=DICOMWEB,
        RIS_FHIR_PROFILES=f"Patient={VN_CORE_PATIENT}",
        RIS_TIME_ZONE="Asia/Ho_Chi_Minh",
    )
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "ris.wsgi",
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        "1",
        "--threads",
        "2",
        "--graceful-timeout",
        "1",
    ]
    with running(argv, env, tmp / "gunicorn.log", port):
        yield f"http://127.0.0.1:{port}/fhir"


@pytest.fixture
def token(transactional_db) -> str:
    user = user_with_role("clinician", "radiologist")
    return Token.objects.get_or_create(user=user)[0].key


def get(url: str, token: str | None) -> tuple[int, dict, str]:
    request = urllib.request.Request(url, headers={"Accept": "application/fhir+json"})
    if token:
        request.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers["Content-Type"]


def valid(resource: dict) -> dict:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resource


def search(base: str, token: str, query: str) -> dict:
    status, bundle, _ = get(f"{base}/{query}", token)
    assert status == 200, bundle
    assert bundle["type"] == "searchset"
    return valid(bundle)


def ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def test_metadata_is_a_valid_capability_statement_listing_the_four_resources(fhir_server, token):
    status, statement, content_type = get(f"{fhir_server}/metadata", token)
    assert status == 200 and content_type.startswith("application/fhir+json")
    valid(statement)
    served = {r["type"] for r in statement["rest"][0]["resource"]}
    assert {"Patient", "ServiceRequest", "ImagingStudy", "DiagnosticReport"} <= served
    assert statement["fhirVersion"] == "4.0.1"


def test_no_token_is_401_with_an_operation_outcome(fhir_server, transactional_db):
    status, outcome, _ = get(f"{fhir_server}/Patient", None)
    assert status == 401
    assert valid(outcome)["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "login"


def test_unknown_id_is_404_with_an_operation_outcome(fhir_server, token):
    status, outcome, _ = get(f"{fhir_server}/Patient/999999", token)
    assert status == 404 and valid(outcome)["issue"][0]["code"] == "not-found"


def test_unknown_resource_type_is_404(fhir_server, token):
    status, outcome, _ = get(f"{fhir_server}/Observation", token)
    assert status == 404 and outcome["resourceType"] == "OperationOutcome"


def test_patient_read_has_identifier_name_and_the_configured_profile(fhir_server, token):
    exam = ready_exam(family_name="NGUYỄN", given_name="Thị Đào")
    patient = exam.order.patient
    status, resource, _ = get(f"{fhir_server}/Patient/{patient.pk}", token)
    assert status == 200
    valid(resource)
    assert resource["identifier"][0]["value"] == patient.patient_id
    assert resource["name"][0]["family"] == "NGUYỄN"
    assert resource["meta"]["profile"] == [VN_CORE_PATIENT]


def test_patient_search_by_identifier_and_by_name_without_accents(fhir_server, token):
    exam = ready_exam(family_name="NGUYỄN", given_name="Thị Đào")
    ready_exam(family_name="TRẦN", given_name="Văn Bình")
    patient = exam.order.patient
    assert ids(search(fhir_server, token, f"Patient?identifier={patient.patient_id}")) == [str(patient.pk)]
    assert ids(search(fhir_server, token, "Patient?name=" + quote("thi dao"))) == [str(patient.pk)]
    assert ids(search(fhir_server, token, "Patient?identifier=" + quote(f"urn:other|{patient.patient_id}"))) == []


def test_service_request_search_by_accession_patient_and_status(fhir_server, token):
    exam = ready_exam()
    other = ready_exam()
    workflow.sign_report(radiologist(), other, findings="x", impression="y", final=True)
    assert ids(search(fhir_server, token, f"ServiceRequest?identifier={exam.accession_number}")) == [str(exam.pk)]
    patient = f"Patient/{exam.order.patient.pk}"
    assert ids(search(fhir_server, token, f"ServiceRequest?patient={quote(patient)}")) == [str(exam.pk)]
    bundle = search(fhir_server, token, "ServiceRequest?status=completed")
    assert set(ids(bundle)) == {str(exam.pk), str(other.pk)}
    assert ids(search(fhir_server, token, "ServiceRequest?status=revoked")) == []


def test_imaging_study_search_by_study_uid_identifier(fhir_server, token):
    exam = ready_exam(images=2)
    ready_exam()
    query = "ImagingStudy?identifier=" + quote(f"urn:dicom:uid|urn:oid:{exam.study_instance_uid}")
    bundle = search(fhir_server, token, query)
    assert ids(bundle) == [str(exam.pk)]
    study = bundle["entry"][0]["resource"]
    assert study["numberOfInstances"] == 2
    assert study["endpoint"] == [{"reference": "Endpoint/dicomweb"}]


def test_imaging_study_search_by_started_range_and_modality(fhir_server, token):
    exam = ready_exam()
    started = get(f"{fhir_server}/ImagingStudy/{exam.pk}", token)[1]["started"][:10]
    assert ids(search(fhir_server, token, f"ImagingStudy?started=ge{started}&modality=CT")) == [str(exam.pk)]
    assert ids(search(fhir_server, token, f"ImagingStudy?started=lt{started}")) == []
    assert ids(search(fhir_server, token, "ImagingStudy?modality=MR")) == []


def test_invalid_date_is_400_with_an_operation_outcome(fhir_server, token):
    status, outcome, _ = get(f"{fhir_server}/ImagingStudy?started=yesterday", token)
    assert status == 400 and valid(outcome)["issue"][0]["code"] == "invalid"


def test_diagnostic_report_read_and_search_by_patient_status_and_date(fhir_server, token):
    exam = ready_exam()
    unsigned = ready_exam()
    report = workflow.sign_report(radiologist(), exam, findings="Findings.", impression="Normal.", final=True)
    status, resource, _ = get(f"{fhir_server}/DiagnosticReport/{exam.pk}", token)
    assert status == 200 and valid(resource)["status"] == "final"
    assert resource["resultsInterpreter"][0]["display"] == "Eva White"
    assert get(f"{fhir_server}/DiagnosticReport/{unsigned.pk}", token)[0] == 404
    patient = quote(f"Patient/{exam.order.patient.pk}")
    assert ids(search(fhir_server, token, f"DiagnosticReport?patient={patient}&status=final")) == [str(exam.pk)]
    day = resource["effectiveDateTime"][:10]
    assert ids(search(fhir_server, token, f"DiagnosticReport?date={day}")) == [str(exam.pk)]
    workflow.sign_report(radiologist(), exam, findings="Fixed.", impression="Normal.", final=True)
    assert ids(search(fhir_server, token, "DiagnosticReport?status=final")) == []
    assert ids(search(fhir_server, token, "DiagnosticReport?status=corrected")) == [str(exam.pk)]
    assert report.version == 1


def test_search_results_are_paged_with_next_and_previous_links(fhir_server, token):
    for _ in range(5):
        ready_exam()
    first = search(fhir_server, token, "ServiceRequest?_count=2")
    assert first["total"] == 5 and len(first["entry"]) == 2
    relations = {link["relation"]: link["url"] for link in first["link"]}
    assert "previous" not in relations
    second = search(fhir_server, token, relations["next"].split("/fhir/", 1)[1])
    assert len(second["entry"]) == 2 and not set(ids(first)) & set(ids(second))
    assert "previous" in {link["relation"] for link in second["link"]}


def test_endpoint_is_readable_when_dicomweb_is_configured(fhir_server, token):
    status, endpoint, _ = get(f"{fhir_server}/Endpoint/dicomweb", token)
    assert status == 200 and valid(endpoint)["address"] == DICOMWEB
