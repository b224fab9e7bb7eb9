"""FHIR R4 results out: the transaction Bundle a sign-off sends to RIS_FHIR_BASE_URL, delivered by
a real Celery worker to a local FHIR server (http.server) that performs its conditional updates.
Every resource received is validated again with the fhir.resources R4B models."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from reports.fhir import build_transaction_bundle
from ris import workflow
from ris.models import OutboundMessage, OutboxStatus
from tests.conftest import database_url_of_test_db, publishing_to, running
from tests.test_reports_helpers import (
    FHIRPeer,
    module_env,
    radiologist,
    ready_exam,
    wait_until,
    worker_argv,
)

pytestmark = pytest.mark.live

DICOMWEB = "http://pacs.example.org/dicom-web"


@pytest.fixture(scope="module")
def fhir_peer() -> Iterator[FHIRPeer]:
    peer = FHIRPeer(200)
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def fhir_env(fhir_peer, his_peer, django_db_setup, django_db_blocker, tmp_path_factory) -> dict[str, str]:
    with django_db_blocker.unblock():
        url = database_url_of_test_db()
    tmp = tmp_path_factory.mktemp("fhir")
    return module_env(
        url,
        tmp,
        TMP_DIR=str(tmp),
        RIS_FHIR_BASE_URL=fhir_peer.base_url,
        RIS_HIS_MLLP=his_peer.address,
        RIS_REPORT_OUTPUT="both",
        RIS_DICOMWEB_BASE_URL=DICOMWEB,
        RIS_FHIR_TIMEOUT="1",
        RIS_OUTBOX_RETRY_BASE_SECONDS="0.2",
        RIS_OUTBOX_RETRY_MAX_SECONDS="1",
    )


@pytest.fixture(scope="module")
def fhir_worker(fhir_env) -> Iterator[None]:
    with running(worker_argv("fhir"), fhir_env, Path(fhir_env["TMP_DIR"]) / "worker.log"):
        yield


@pytest.fixture
def fhir(fhir_peer, his_peer, fhir_env, fhir_worker, transactional_db, settings) -> Iterator[FHIRPeer]:
    """The FHIR server, empty and answering 200; this process signs with RIS_REPORT_OUTPUT=fhir."""
    fhir_peer.status = lambda _n: 200
    with fhir_peer.lock:
        fhir_peer.bundles.clear()
        fhir_peer.store.clear()
    settings.RIS_FHIR_BASE_URL = fhir_peer.base_url
    settings.RIS_HIS_MLLP = his_peer.address
    settings.RIS_REPORT_OUTPUT = "fhir"
    settings.RIS_DICOMWEB_BASE_URL = DICOMWEB
    with publishing_to(fhir_env):
        yield fhir_peer


def sign(exam, final=True, **kw):
    kw.setdefault("findings", "Không có tổn thương cấp tính.\nVentricles | normal ^ size.")
    kw.setdefault("impression", "Bình thường.")
    return workflow.sign_report(radiologist(), exam, final=final, **kw)


def fhir_row(report) -> OutboundMessage:
    return OutboundMessage.objects.get(report=report, destination="fhir")


def status_of(row: OutboundMessage) -> str:
    row.refresh_from_db()
    return row.status


def by_type(bundle: dict) -> dict[str, dict]:
    return {e["resource"]["resourceType"]: e for e in bundle["entry"]}


def test_signed_report_reaches_the_fhir_server_as_a_valid_transaction_bundle(fhir):
    report = sign(ready_exam())
    row = fhir_row(report)
    assert wait_until(lambda: status_of(row) == OutboxStatus.DELIVERED)
    [bundle] = fhir.bundles
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    for entry in bundle["entry"]:
        get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])
        assert entry["request"]["method"] == "PUT" and "?identifier=" in entry["request"]["url"]
    assert set(by_type(bundle)) == {
        "Patient",
        "ServiceRequest",
        "Practitioner",
        "Endpoint",
        "ImagingStudy",
        "DiagnosticReport",
    }


def test_references_in_the_bundle_point_at_its_own_entries(fhir):
    bundle = build_transaction_bundle(sign(ready_exam()), "b1")
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    entries = by_type(bundle)
    report = entries["DiagnosticReport"]["resource"]
    for reference in (
        report["subject"],
        report["basedOn"][0],
        report["imagingStudy"][0],
        report["resultsInterpreter"][0],
        entries["ImagingStudy"]["resource"]["endpoint"][0],
    ):
        assert reference["reference"] in full_urls


def test_diagnostic_report_carries_status_category_conclusion_and_the_text(fhir):
    report = sign(ready_exam())
    resource = by_type(build_transaction_bundle(report, "b1"))["DiagnosticReport"]["resource"]
    assert resource["status"] == "final"
    assert resource["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
        "code": "RAD",
        "display": "Radiology",
    }
    assert resource["code"]["coding"][0]["code"] == "18748-4"
    assert resource["conclusion"] == "Bình thường."
    text = base64.b64decode(resource["presentedForm"][0]["data"]).decode("utf-8")
    assert "Không có tổn thương cấp tính." in text and "Ventricles | normal ^ size." in text


def test_imaging_study_lists_the_series_and_instances_that_arrived(fhir):
    exam = ready_exam(images=3)
    resource = by_type(build_transaction_bundle(sign(exam), "b1"))["ImagingStudy"]["resource"]
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{exam.study_instance_uid}"} in resource["identifier"]
    assert resource["status"] == "available"
    assert resource["modality"] == [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]
    assert resource["numberOfSeries"] == 1 and resource["numberOfInstances"] == 3
    series = resource["series"][0]
    assert not series["uid"].startswith("urn:")  # R4: bare UIDs in series and instances
    assert [i["number"] for i in series["instance"]] == [1, 2, 3]
    assert series["instance"][0]["sopClass"] == {
        "system": "urn:ietf:rfc:3986",
        "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2",
    }


def test_endpoint_is_the_configured_dicomweb_base_url(fhir):
    endpoint = by_type(build_transaction_bundle(sign(ready_exam()), "b1"))["Endpoint"]["resource"]
    assert endpoint["address"] == DICOMWEB
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"


def test_final_then_correction_updates_one_diagnostic_report_on_the_server(fhir):
    exam = ready_exam()
    final = fhir_row(sign(exam))
    correction = fhir_row(sign(exam, findings="Corrected.", amendment="correction"))
    assert wait_until(lambda: status_of(final) == status_of(correction) == OutboxStatus.DELIVERED)
    [stored] = fhir.stored("DiagnosticReport")  # conditional update: one resource, not two
    assert stored["status"] == "corrected"
    assert len(fhir.stored("Patient")) == 1 and len(fhir.stored("ImagingStudy")) == 1


def test_addendum_is_sent_as_appended_and_keeps_the_signed_text(fhir):
    exam = ready_exam()
    sign(exam, findings="Original findings.")
    addendum = sign(exam, findings="Late comparison: stable.", impression="", amendment="addendum")
    row = fhir_row(addendum)
    assert wait_until(lambda: status_of(row) == OutboxStatus.DELIVERED)
    [stored] = fhir.stored("DiagnosticReport")
    assert stored["status"] == "appended"
    text = base64.b64decode(stored["presentedForm"][0]["data"]).decode("utf-8")
    assert "Original findings." in text and "ADDENDUM" in text and "Late comparison: stable." in text


def test_redelivering_the_same_bundle_duplicates_nothing(fhir):
    report = sign(ready_exam())
    row = fhir_row(report)
    assert wait_until(lambda: status_of(row) == OutboxStatus.DELIVERED)
    OutboundMessage.objects.filter(pk=row.pk).update(status=OutboxStatus.PENDING)  # as after a lost ACK
    from ris import outbox

    outbox.enqueue([row.pk])
    assert wait_until(lambda: len(fhir.bundles) == 2 and status_of(row) == OutboxStatus.DELIVERED)
    assert fhir.bundles[0] == fhir.bundles[1]
    assert len(fhir.stored("DiagnosticReport")) == 1 and len(fhir.stored("ServiceRequest")) == 1


def test_server_error_is_retried_until_the_server_accepts(fhir):
    fhir.status = lambda n: 503 if n <= 2 else 200
    row = fhir_row(sign(ready_exam()))
    assert wait_until(lambda: status_of(row) == OutboxStatus.DELIVERED)
    assert row.attempts == 3


def test_server_timeout_is_retried(fhir):
    fhir.status = lambda n: "timeout" if n == 1 else 200
    row = fhir_row(sign(ready_exam()))
    assert wait_until(lambda: status_of(row) == OutboxStatus.DELIVERED)
    assert row.attempts == 2


def test_client_error_parks_the_bundle_with_the_servers_diagnostics(fhir):
    fhir.status = lambda _n: 422
    row = fhir_row(sign(ready_exam()))
    assert wait_until(lambda: status_of(row) == OutboxStatus.FAILED)
    assert row.attempts == 1
    assert "422" in row.last_error and "test server says 422" in row.last_error


def test_output_both_sends_oru_and_fhir_independently(fhir, his_peer, settings):
    settings.RIS_REPORT_OUTPUT = "both"
    fhir.status = lambda _n: 422  # the FHIR server refusing does not hold the HIS back
    report = sign(ready_exam())
    oru = OutboundMessage.objects.get(report=report, destination="oru")
    assert wait_until(lambda: status_of(oru) == OutboxStatus.DELIVERED)
    assert wait_until(lambda: status_of(fhir_row(report)) == OutboxStatus.FAILED)
