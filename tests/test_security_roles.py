"""Least privilege per role (issue 9), beyond the pages of the UI (tests/test_ui_access.py): what
each role may and may not do through the workflow core (the rule every adapter shares), the
JSON API with a token, the Django admin and the `manage.py user` command."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from ris import workflow
from ris.models import AuditEvent, Patient, Report, RequestedProcedure
from ris.roles import ROLE_PERMISSIONS, ROLES
from tests.test_reports_helpers import ready_exam, scheduled_exam, user_with_role

pytestmark = pytest.mark.django_db

SIGN, SCHEDULE, PERFORM, RECONCILE = "ris.sign_report", "ris.schedule_exam", "ris.perform_exam", "ris.reconcile_exam"
MANAGE_MODALITIES = {"worklist.add_modality", "worklist.change_modality", "worklist.delete_modality"}
MANAGE_USERS = {"auth.add_user", "auth.change_user", "auth.delete_user"}
MANAGE_TOKENS = {
    f"authtoken.{verb}_{model}" for verb in ("add", "change", "delete", "view") for model in ("token", "tokenproxy")
}

# Who may do what: written out here, not derived from ris/roles.py, so a role that gains a
# permission it should not have fails a test.
MAY = {
    "scheduler": {SCHEDULE, RECONCILE},
    "technologist": {PERFORM},
    "radiologist": {SIGN, "ris.view_report"},
    "admin": {SCHEDULE, PERFORM, RECONCILE, "ris.view_report", "ris.view_auditevent", "auth.change_user"}
    | MANAGE_MODALITIES,
}
GUARDED = (
    {SIGN, SCHEDULE, PERFORM, RECONCILE, "ris.view_report", "ris.view_auditevent"}
    | MANAGE_MODALITIES
    | MANAGE_USERS
    | MANAGE_TOKENS
)


def person(role: str) -> User:
    return user_with_role(f"{role}01", role)


def actor(role: str) -> workflow.Actor:
    return workflow.Actor.for_user(person(role), "10.0.0.5")


def denied(call) -> bool:
    """True if the workflow refused the call as not permitted (and so changed nothing)."""
    try:
        call()
    except workflow.WorkflowError as error:
        assert error.code == "permission_denied", error
        return True
    return False


def reloaded(exam: RequestedProcedure) -> RequestedProcedure:
    return RequestedProcedure.objects.get(pk=exam.pk)


# --- the roles' permissions ---------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_each_role_holds_exactly_the_guarded_permissions_its_people_need(role):
    user = person(role)
    held = {perm for perm in GUARDED if user.has_perm(perm)}
    assert held == MAY[role]
    assert not user.is_superuser


def test_no_role_both_signs_reports_and_runs_the_ris():
    signers = {role for role, perms in ROLE_PERMISSIONS.items() if SIGN in perms}
    assert signers == {"radiologist"}
    assert not any(p in ROLE_PERMISSIONS["radiologist"] for p in (SCHEDULE, PERFORM, RECONCILE, "ris.view_auditevent"))


# --- the workflow core --------------------------------------------------------------------


def order_request() -> workflow.OrderRequest:
    start = timezone.now() + dt.timedelta(hours=2)
    return workflow.OrderRequest(
        procedures=[
            workflow.ProcedureRequest(
                modality="CT",
                procedure_description="CT chest",
                steps=[workflow.StepRequest(modality="CT", start=start, station_ae_title="CT1")],
            )
        ]
    )


@pytest.mark.parametrize(
    ("role", "allowed"), [("scheduler", True), ("admin", True), ("technologist", False), ("radiologist", False)]
)
def test_only_schedulers_and_admins_register_patients_and_place_schedule_and_cancel_orders(role, allowed):
    patient = scheduled_exam().order.patient
    who = actor(role)
    orders_before = patient.orders.count()
    assert denied(lambda: workflow.place_order(who, patient, order_request())) is not allowed
    assert patient.orders.count() == orders_before + allowed
    walk_in = workflow.Demographics(family_name="Lê", given_name="Thị Hoa")
    assert denied(lambda: workflow.register_patient(who, f"WALKIN-{role}", "HOSP", walk_in)) is not allowed
    assert Patient.objects.filter(patient_id=f"WALKIN-{role}").exists() is allowed
    exam = scheduled_exam()
    later = timezone.now() + dt.timedelta(days=1)
    assert denied(lambda: workflow.schedule_exam(who, exam, start=later)) is not allowed
    assert denied(lambda: workflow.cancel_exam(who, reloaded(exam), reason="duplicate")) is not allowed
    assert reloaded(exam).status == ("CANCELLED" if allowed else "SCHEDULED")


@pytest.mark.parametrize(
    ("role", "allowed"), [("technologist", True), ("admin", True), ("scheduler", False), ("radiologist", False)]
)
def test_only_technologists_and_admins_perform_exams(role, allowed):
    who = actor(role)
    arrived = scheduled_exam()
    assert denied(lambda: workflow.record_patient_arrived(who, arrived)) is not allowed
    exam = scheduled_exam()
    steps = list(exam.scheduled_steps.all())
    assert denied(lambda: workflow.start_performed_step(who, workflow.new_uid(), steps, modality="CT")) is not allowed
    assert reloaded(exam).status == ("IN_PROGRESS" if allowed else "SCHEDULED")


@pytest.mark.parametrize("role", ["scheduler", "technologist", "admin"])
def test_only_radiologists_write_and_sign_reports(role):
    exam = ready_exam()
    who = actor(role)
    assert denied(lambda: workflow.save_report_draft(who, exam, findings="No bleed.", impression="Normal."))
    assert denied(lambda: workflow.sign_report(who, exam, findings="No bleed.", impression="Normal.", final=True))
    assert not Report.objects.filter(requested_procedure=exam).exists()
    assert reloaded(exam).status == "READY_FOR_READING"


def test_a_radiologist_signs_but_neither_orders_performs_nor_accepts_exams():
    rad = actor("radiologist")
    exam = ready_exam()
    workflow.sign_report(rad, exam, findings="No bleed.", impression="Normal.", final=True)
    assert reloaded(exam).status == "FINAL"
    other = scheduled_exam()
    assert denied(lambda: workflow.place_order(rad, other.order.patient, order_request()))
    assert denied(lambda: workflow.record_patient_arrived(rad, other))
    assert denied(lambda: workflow.mark_ready_for_reading(rad, other, override_reason="looks fine"))


@pytest.mark.parametrize(
    ("role", "allowed"), [("scheduler", True), ("admin", True), ("technologist", False), ("radiologist", False)]
)
def test_only_schedulers_and_admins_accept_exams_and_merge_patients(role, allowed):
    who = actor(role)
    exam = scheduled_exam()
    ct = workflow.Actor.for_ae("CT1")
    performed = workflow.start_performed_step(ct, workflow.new_uid(), list(exam.scheduled_steps.all()))
    workflow.complete_performed_step(ct, performed)
    assert (
        denied(lambda: workflow.mark_ready_for_reading(who, reloaded(exam), override_reason="scout only"))
        is not allowed
    )
    assert reloaded(exam).status == ("READY_FOR_READING" if allowed else "COMPLETED")
    survivor, duplicate = scheduled_exam().order.patient, scheduled_exam().order.patient
    assert denied(lambda: workflow.merge_patients(who, survivor, duplicate)) is not allowed
    assert (Patient.objects.get(pk=duplicate.pk).merged_into_id == survivor.pk) is allowed


def test_a_person_without_a_role_or_deactivated_may_do_nothing():
    nobody = workflow.Actor.for_user(User.objects.create_user("visitor"))
    gone = person("scheduler")
    gone.is_active = False
    gone.save()
    exam = scheduled_exam()
    for who in (nobody, workflow.Actor.for_user(User.objects.get(pk=gone.pk))):
        assert denied(lambda who=who: workflow.place_order(who, exam.order.patient, order_request()))
        assert denied(lambda who=who: workflow.cancel_exam(who, exam))
        assert denied(lambda who=who: workflow.record_patient_arrived(who, exam))
    assert not AuditEvent.objects.filter(actor__in=["visitor", gone.username]).exists()


# --- the JSON API with a token ------------------------------------------------------------


def post_report(token: str, accession: str):
    return Client().post(
        f"/api/exams/{accession}/report",
        {"findings": "No bleed.", "impression": "Normal.", "status": "final"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {token}",
    )


@pytest.mark.parametrize(
    ("role", "expected"), [("radiologist", 201), ("scheduler", 403), ("technologist", 403), ("admin", 403)]
)
def test_an_api_token_signs_only_for_a_radiologist(role, expected):
    exam = ready_exam()
    token = Token.objects.create(user=person(role)).key
    assert post_report(token, exam.accession_number).status_code == expected
    assert Report.objects.filter(requested_procedure=exam).exists() is (expected == 201)


@pytest.mark.parametrize("path", ["/api/exams", "/fhir/ImagingStudy", "/fhir/Patient", "/fhir/metadata"])
def test_an_api_token_reads_patient_data_only_for_a_person_with_a_role(path):
    ready_exam()
    nobody = Token.objects.create(user=User.objects.create_user("integration")).key
    clerk = Token.objects.create(user=person("scheduler")).key
    assert Client().get(path, HTTP_AUTHORIZATION=f"Token {nobody}").status_code == 403
    assert Client().get(path, HTTP_AUTHORIZATION=f"Token {clerk}").status_code == 200


def test_deactivating_a_person_stops_their_api_token_and_open_session():
    rad = person("radiologist")
    token = Token.objects.create(user=rad).key
    session = Client()
    session.force_login(rad)
    assert session.get("/reading/").status_code == 200
    exam = ready_exam()
    rad.is_active = False
    rad.save()
    assert post_report(token, exam.accession_number).status_code == 401
    assert Client().get("/api/exams", HTTP_AUTHORIZATION=f"Token {token}").status_code == 401
    assert session.get("/reading/").status_code == 302  # to the login page


# --- the Django admin and the management commands -----------------------------------------


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("role", ["scheduler", "technologist", "radiologist"])
def test_only_admins_open_the_django_admin(role):
    call_command("user", "add", f"{role}02", "--role", role, "--password", "Xk3!long-enough-pass")
    client = logged_in(User.objects.get(username=f"{role}02"))
    assert client.get("/admin/worklist/modality/add/").status_code == 302  # to the admin login
    assert client.get("/admin/auth/user/").status_code == 302


def test_an_admin_manages_modalities_and_deactivates_people_but_sets_no_roles_passwords_or_tokens():
    call_command("user", "add", "it01", "--role", "admin", "--password", "Xk3!long-enough-pass")
    rad = person("radiologist")
    client = logged_in(User.objects.get(username="it01"))
    assert client.get("/admin/worklist/modality/add/").status_code == 200
    assert client.get(f"/admin/auth/user/{rad.pk}/change/").status_code == 200
    assert client.get(f"/admin/auth/user/{rad.pk}/password/").status_code == 403
    assert client.get("/admin/auth/user/add/").status_code == 403
    assert client.get("/admin/authtoken/tokenproxy/").status_code == 403
    client.post(
        f"/admin/auth/user/{rad.pk}/change/",
        {"is_active": "", "is_superuser": "on", "groups": [], "username": "renamed"},
    )
    rad = User.objects.get(pk=rad.pk)
    assert (rad.is_active, rad.is_superuser, rad.username) == (False, False, "radiologist01")
    assert rad.groups.filter(name="radiologist").exists()
    me = User.objects.get(username="it01")
    client.post(f"/admin/auth/user/{me.pk}/change/", {"is_active": "on", "is_superuser": "on"})
    assert not User.objects.get(pk=me.pk).is_superuser


def test_changing_a_persons_role_takes_the_old_roles_rights_away():
    call_command("user", "add", "ha01", "--role", "admin", "--password", "Xk3!long-enough-pass")
    call_command("user", "add", "ha01", "--role", "technologist")
    user = User.objects.get(username="ha01")
    assert not user.is_staff
    assert {perm for perm in GUARDED if user.has_perm(perm)} == MAY["technologist"]
