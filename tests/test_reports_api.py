"""Report sign-off through POST /api/exams/<accession>/report: the life cycle, amendments and
bad input, and the outbox rows a sign-off writes (one per destination, in the same transaction)."""

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from ris import workflow
from ris.models import AuditEvent, ExamStatus, OutboundMessage, Report, ReportStatus
from tests.test_reports_helpers import ready_exam, scheduled_exam, user_with_role

pytestmark = pytest.mark.django_db

NASTY = "Tổn thương |^~\\& ở thùy trán phải, kích thước 2 x 3 cm."


@pytest.fixture(autouse=True)
def both_outputs(settings):
    settings.RIS_HIS_MLLP = "127.0.0.1:9"
    settings.RIS_FHIR_BASE_URL = "http://127.0.0.1:9/fhir"
    settings.RIS_REPORT_OUTPUT = "both"


def client_for(role: str) -> APIClient:
    client = APIClient()
    user = user_with_role(f"{role}-api", role, first_name="Eva", last_name="White")
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def post(exam, role="radiologist", **body):
    body.setdefault("findings", "No acute abnormality.")
    body.setdefault("impression", "Normal.")
    body.setdefault("status", "final")
    return client_for(role).post(f"/api/exams/{exam.accession_number}/report", body, format="json")


def test_final_sign_off_writes_one_outbox_row_per_destination_with_rendered_payloads():
    exam = ready_exam()
    response = post(exam)
    assert response.status_code == 201, response.data
    rows = {m.destination: m for m in OutboundMessage.objects.filter(requested_procedure=exam)}
    assert set(rows) == {"oru", "fhir"}
    assert rows["oru"].payload.startswith("MSH|") and '"resourceType": "Bundle"' in rows["fhir"].payload
    assert len({m.message_control_id for m in rows.values()}) == 2


def test_sign_off_is_audited_with_the_radiologist_and_version():
    exam = ready_exam()
    post(exam)
    event = AuditEvent.objects.get(requested_procedure=exam, action="report.signed")
    assert event.actor == "radiologist-api" and event.detail["report_version"] == 1


def test_empty_report_is_400_and_writes_nothing():
    exam = ready_exam()
    response = post(exam, findings="  ", impression="")
    assert response.status_code == 400
    assert not Report.objects.filter(requested_procedure=exam).exists()
    assert not OutboundMessage.objects.exists()


def test_signing_a_cancelled_exam_is_409_with_the_reason():
    exam = workflow.cancel_exam(workflow.SYSTEM, scheduled_exam(), reason="ordered in error")
    response = post(exam)
    assert response.status_code == 409
    assert "CANCELLED" in response.data["error"]
    assert not OutboundMessage.objects.exists()


def test_unknown_accession_is_404():
    response = client_for("radiologist").post("/api/exams/NOPE/report", {"findings": "x", "status": "final"})
    assert response.status_code == 404


@pytest.mark.parametrize("role", ["technologist", "scheduler", "admin"])
def test_only_a_radiologist_signs(role):
    exam = ready_exam()
    assert post(exam, role=role).status_code == 403
    exam.refresh_from_db()
    assert exam.status == ExamStatus.READY_FOR_READING and not OutboundMessage.objects.exists()


def test_preliminary_after_final_is_409():
    exam = ready_exam()
    post(exam)
    response = post(exam, status="preliminary")
    assert response.status_code == 409
    assert Report.objects.filter(requested_procedure=exam).count() == 1


def test_second_final_is_a_correction_by_default_and_keeps_the_first_version():
    exam = ready_exam()
    post(exam, findings="First.")
    response = post(exam, findings="Second.")
    assert response.status_code == 201 and response.data["exam_status"] == ExamStatus.AMENDED
    first, second = Report.objects.filter(requested_procedure=exam).order_by("version")
    assert first.findings == "First." and first.status == ReportStatus.FINAL
    assert second.amendment == "correction" and second.supersedes == first
    assert OutboundMessage.objects.filter(requested_procedure=exam).count() == 4  # two versions x two outputs


def test_addendum_keeps_the_signed_text_and_adds_its_own():
    exam = ready_exam()
    post(exam, findings="Original findings.")
    response = post(exam, findings="Compared with prior: stable.", impression="", amendment="addendum")
    assert response.status_code == 201
    addendum = Report.objects.get(requested_procedure=exam, version=2)
    assert addendum.amendment == "addendum"
    assert addendum.findings.startswith("Original findings.")
    assert "ADDENDUM" in addendum.findings and addendum.findings.endswith("Compared with prior: stable.")
    assert addendum.impression == "Normal."


def test_amendment_on_a_first_final_is_400():
    response = post(ready_exam(), amendment="addendum")
    assert response.status_code == 400 and response.data["code"] == "invalid"


def test_unknown_amendment_kind_is_400():
    exam = ready_exam()
    post(exam)
    assert post(exam, amendment="rewrite").status_code == 400


def test_report_text_with_delimiters_and_vietnamese_is_kept_exactly():
    exam = ready_exam()
    assert post(exam, findings=NASTY).status_code == 201
    assert Report.objects.get(requested_procedure=exam).findings == NASTY


def test_destinations_follow_report_output_and_configured_peers(settings):
    settings.RIS_REPORT_OUTPUT = "fhir"
    exam = ready_exam()
    post(exam)
    assert list(OutboundMessage.objects.values_list("destination", flat=True)) == ["fhir"]
    settings.RIS_FHIR_BASE_URL = ""  # output chosen but no server configured: nothing to send
    other = ready_exam()
    post(other)
    assert not OutboundMessage.objects.filter(requested_procedure=other).exists()


def test_the_same_final_submitted_twice_is_refused_as_a_duplicate():
    exam = ready_exam()
    assert post(exam).status_code == 201
    response = post(exam)
    assert response.status_code == 409 and response.data["code"] == "duplicate"
    assert Report.objects.filter(requested_procedure=exam).count() == 1
    assert OutboundMessage.objects.filter(requested_procedure=exam).count() == 2


def test_a_final_repeating_the_preliminary_text_is_the_normal_sign_off():
    exam = ready_exam()
    post(exam, status="preliminary")
    assert post(exam).status_code == 201
    exam.refresh_from_db()
    assert exam.status == ExamStatus.FINAL
