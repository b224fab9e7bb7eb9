"""The JSON API of the contract: token auth, exam list and filters, report sign-off."""

import datetime as dt

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from ris import workflow
from ris.models import ExamStatus, Instance, Series, Study
from tests.test_workflow import CT1, make_exam, perform

pytestmark = pytest.mark.django_db


def client_for(role: str | None) -> APIClient:
    client = APIClient()
    if role:
        user = User.objects.create_user(f"{role}-user", password="x-Long-pass-1")
        user.groups.add(Group.objects.get(name=role))
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def test_no_token_is_401_with_token_challenge():
    response = APIClient().get("/api/exams")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_bad_token_is_401():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert client.get("/api/exams").status_code == 401


def test_exam_list_has_the_contract_fields():
    exam = make_exam()
    response = client_for("scheduler").get("/api/exams", {"accession": exam.accession_number})
    assert response.status_code == 200
    [row] = response.json()
    assert row["accession"] == exam.accession_number
    assert row["status"] == "SCHEDULED"
    assert row["patient_id"] == "P1"
    assert row["study_instance_uid"] == exam.study_instance_uid
    assert row["modality"] == "CT"
    assert dt.datetime.fromisoformat(row["scheduled_start"]) == exam.scheduled_steps.get().start
    assert row["images"] == {"expected": 0, "received": 0}
    assert row["report_status"] is None


def test_image_counts_are_expected_from_mpps_and_received_from_arrivals():
    exam = make_exam()
    images = [workflow.ExpectedImage("1.2.9.1", f"1.2.9.1.{i}") for i in range(4)]
    perform(exam, "1.2.9", images)
    study = Study.objects.create(study_instance_uid=exam.study_instance_uid, requested_procedure=exam)
    series = Series.objects.create(series_instance_uid="1.2.9.1", study=study)
    for i in range(3):
        Instance.objects.create(sop_instance_uid=f"1.2.9.1.{i}", series=series, source="STORE")
    [row] = client_for("scheduler").get("/api/exams", {"accession": exam.accession_number}).json()
    assert row["images"] == {"expected": 4, "received": 3}
    assert row["status"] == ExamStatus.COMPLETED


def test_filters_patient_status_date_and_modality(settings):
    settings.RIS_TIME_ZONE = "Asia/Ho_Chi_Minh"
    tomorrow = timezone.now() + dt.timedelta(days=1)
    ct = make_exam(start=tomorrow)
    mr = make_exam(start=tomorrow + dt.timedelta(days=3), modality="MR")
    workflow.cancel_exam(CT1, mr)
    client = client_for("scheduler")

    def accessions(**params):
        return [row["accession"] for row in client.get("/api/exams", params).json()]

    assert sorted(accessions(patient_id="P1")) == sorted([ct.accession_number, mr.accession_number])
    assert accessions(status="cancelled") == [mr.accession_number]
    assert accessions(modality="CT") == [ct.accession_number]
    local_day = tomorrow.astimezone(dt.timezone(dt.timedelta(hours=7))).date().isoformat()
    assert accessions(date=local_day) == [ct.accession_number]
    assert client.get("/api/exams", {"date": "26/11/2026"}).status_code == 400


def ready(exam):
    perform(exam, f"1.2.8.{exam.pk}")
    workflow.mark_ready_for_reading(workflow.SYSTEM, exam)
    return exam


def test_radiologist_signs_a_final_report():
    exam = ready(make_exam())
    response = client_for("radiologist").post(
        f"/api/exams/{exam.accession_number}/report",
        {"findings": "Không có bất thường.", "impression": "Bình thường.", "status": "final"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["exam_status"] == "FINAL"
    [row] = client_for("scheduler").get("/api/exams", {"accession": exam.accession_number}).json()
    assert (row["status"], row["report_status"]) == ("FINAL", "FINAL")


def test_later_final_on_a_final_exam_is_an_amendment():
    exam = ready(make_exam())
    client = client_for("radiologist")
    url = f"/api/exams/{exam.accession_number}/report"
    assert client.post(url, {"findings": "a", "impression": "b", "status": "final"}, format="json").status_code == 201
    response = client.post(url, {"findings": "a", "impression": "c", "status": "final"}, format="json")
    assert response.status_code == 201
    assert response.json()["exam_status"] == "AMENDED"


@pytest.mark.parametrize("role", ["scheduler", "technologist", "admin"])
def test_other_roles_may_not_sign(role):
    exam = ready(make_exam())
    response = client_for(role).post(
        f"/api/exams/{exam.accession_number}/report", {"findings": "a", "status": "final"}, format="json"
    )
    assert response.status_code == 403


def test_report_on_unknown_exam_is_404_and_bad_status_is_400():
    client = client_for("radiologist")
    assert client.post("/api/exams/NOPE/report", {"status": "final"}, format="json").status_code == 404
    exam = ready(make_exam())
    bad = client.post(f"/api/exams/{exam.accession_number}/report", {"status": "signed"}, format="json")
    assert bad.status_code == 400


def test_report_on_exam_not_ready_is_409_with_reason():
    exam = make_exam()
    response = client_for("radiologist").post(
        f"/api/exams/{exam.accession_number}/report", {"findings": "a", "status": "final"}, format="json"
    )
    assert response.status_code == 409
    assert "SCHEDULED" in response.json()["error"]


def test_ui_pages_need_login():
    from django.test import Client

    response = Client().get("/")
    assert response.status_code == 302
    assert "login" in response["Location"]


def test_roles_carry_their_permissions():
    def perms(role):
        user, _ = User.objects.get_or_create(username=f"p-{role}")
        user.groups.add(Group.objects.get(name=role))
        return User.objects.get(pk=user.pk)  # fresh instance: empty permission cache

    assert perms("radiologist").has_perm("ris.sign_report")
    assert not perms("scheduler").has_perm("ris.sign_report")
    assert perms("scheduler").has_perm("ris.schedule_exam")
    assert not perms("technologist").has_perm("ris.schedule_exam")
    assert perms("technologist").has_perm("ris.perform_exam")
    assert perms("admin").has_perm("worklist.add_modality")
