"""The exam life cycle (ris.workflow): transition tables, actions, audit, permissions."""

import datetime as dt
import itertools

import pytest
from django.contrib.auth.models import Group, User
from django.db import IntegrityError
from django.utils import timezone

from ris import workflow
from ris.models import (
    AuditEvent,
    ExamStatus,
    OutboundMessage,
    Patient,
    PerformedStatus,
    ReportStatus,
    RequestedProcedure,
    ScheduledStep,
    StepStatus,
)

pytestmark = pytest.mark.django_db
E, S, P = ExamStatus, StepStatus, PerformedStatus
HIS = workflow.Actor.for_hl7("HIS", "HOSP", "10.0.0.1:5000")
CT1 = workflow.Actor.for_ae("CT1")

# The life cycle as the contract states it, written out independently of the module's table.
EXPECTED_EXAM_EDGES = {
    (E.ORDERED, E.SCHEDULED),
    (E.ORDERED, E.IN_PROGRESS),
    (E.ORDERED, E.CANCELLED),
    (E.ORDERED, E.DISCONTINUED),
    (E.SCHEDULED, E.ORDERED),
    (E.SCHEDULED, E.SCHEDULED),
    (E.SCHEDULED, E.IN_PROGRESS),
    (E.SCHEDULED, E.CANCELLED),
    (E.SCHEDULED, E.DISCONTINUED),
    (E.IN_PROGRESS, E.COMPLETED),
    (E.IN_PROGRESS, E.DISCONTINUED),
    (E.COMPLETED, E.READY_FOR_READING),
    (E.COMPLETED, E.IN_PROGRESS),
    (E.READY_FOR_READING, E.PRELIMINARY),
    (E.READY_FOR_READING, E.FINAL),
    (E.READY_FOR_READING, E.IN_PROGRESS),
    (E.PRELIMINARY, E.PRELIMINARY),
    (E.PRELIMINARY, E.FINAL),
    (E.FINAL, E.AMENDED),
    (E.AMENDED, E.AMENDED),
    (E.DISCONTINUED, E.SCHEDULED),
    (E.DISCONTINUED, E.CANCELLED),
}
EXPECTED_STEP_EDGES = {
    (S.SCHEDULED, S.SCHEDULED),
    (S.SCHEDULED, S.ARRIVED),
    (S.SCHEDULED, S.STARTED),
    (S.SCHEDULED, S.CANCELLED),
    (S.SCHEDULED, S.DISCONTINUED),
    (S.ARRIVED, S.SCHEDULED),
    (S.ARRIVED, S.STARTED),
    (S.ARRIVED, S.CANCELLED),
    (S.ARRIVED, S.DISCONTINUED),
    (S.STARTED, S.COMPLETED),
    (S.STARTED, S.DISCONTINUED),
    (S.COMPLETED, S.STARTED),
}


@pytest.mark.parametrize(("current", "new"), list(itertools.product(E.values, E.values)))
def test_exam_transition_table(current, new):
    if (current, new) in EXPECTED_EXAM_EDGES:
        workflow.check_exam_transition(current, new)
    else:
        with pytest.raises(workflow.WorkflowError) as err:
            workflow.check_exam_transition(current, new)
        assert err.value.code in ("illegal_transition", "in_progress")
        assert err.value.reason


@pytest.mark.parametrize(("current", "new"), list(itertools.product(S.values, S.values)))
def test_step_transition_table(current, new):
    if (current, new) in EXPECTED_STEP_EDGES:
        workflow.check_step_transition(current, new)
    else:
        with pytest.raises(workflow.WorkflowError):
            workflow.check_step_transition(current, new)


@pytest.mark.parametrize(("current", "new"), list(itertools.product(P.values, P.values)))
def test_performed_step_transition_table(current, new):
    if current == P.IN_PROGRESS and new in (P.COMPLETED, P.DISCONTINUED):
        workflow.check_performed_transition(current, new)
    else:
        with pytest.raises(workflow.WorkflowError, match="may no longer be updated"):
            workflow.check_performed_transition(current, new)


def test_cancel_of_an_exam_in_progress_says_in_progress():
    with pytest.raises(workflow.WorkflowError) as err:
        workflow.check_exam_transition(E.IN_PROGRESS, E.CANCELLED)
    assert err.value.code == "in_progress"


# --- helpers ---------------------------------------------------------------------------


def make_patient(pid="P1", family="Nguyễn", given="Văn An") -> Patient:
    return workflow.register_patient(HIS, pid, "HOSP", workflow.Demographics(family_name=family, given_name=given))


def make_exam(start: dt.datetime | None = None, modality="CT", station="CT1", steps=1) -> RequestedProcedure:
    start = start if start is not None else timezone.now() + dt.timedelta(hours=1)
    patient = make_patient()
    order = workflow.place_order(
        HIS,
        patient,
        workflow.OrderRequest(
            placer_order_number=f"PL{RequestedProcedure.objects.count() + 1}",
            procedures=[
                workflow.ProcedureRequest(
                    modality=modality,
                    procedure_code="CTHEAD",
                    procedure_description="CT head",
                    steps=[
                        workflow.StepRequest(modality=modality, start=start, station_ae_title=station)
                        for _ in range(steps)
                    ],
                )
            ],
        ),
    )
    return order.requested_procedures.get()


def user_with_role(name: str, role: str) -> User:
    user = User.objects.create_user(name, password="x-Long-pass-1")
    user.groups.add(Group.objects.get(name=role))
    return User.objects.get(pk=user.pk)  # fresh instance: permission cache empty


def perform(exam: RequestedProcedure, uid="1.2.3.4.1", images=()) -> None:
    performed = workflow.start_performed_step(CT1, uid, list(exam.scheduled_steps.all()))
    workflow.complete_performed_step(CT1, performed, list(images))


# --- orders and scheduling -------------------------------------------------------------


def test_order_with_start_times_is_scheduled_and_assigns_identifiers():
    exam = make_exam()
    assert exam.status == E.SCHEDULED
    assert exam.accession_number and len(exam.accession_number) <= 16
    assert exam.study_instance_uid.startswith("1.2.826.0.1.3680043.10.1451.") and len(exam.study_instance_uid) <= 64
    step = exam.scheduled_steps.get()
    assert step.status == S.SCHEDULED and step.sps_id and step.station_ae_title == "CT1"
    assert exam.order.filler_order_number


def test_order_without_start_time_waits_ordered_until_scheduled():
    patient = make_patient()
    order = workflow.place_order(
        HIS, patient, workflow.OrderRequest(procedures=[workflow.ProcedureRequest(modality="MR")])
    )
    exam = order.requested_procedures.get()
    assert exam.status == E.ORDERED
    start = timezone.now() + dt.timedelta(days=1)
    workflow.schedule_exam(HIS, exam, start=start, station_ae_title="MR1")
    exam.refresh_from_db()
    step = exam.scheduled_steps.get()
    assert (exam.status, step.start, step.station_ae_title) == (E.SCHEDULED, start, "MR1")


def test_reschedule_moves_the_open_step_and_is_audited():
    exam = make_exam()
    later = timezone.now() + dt.timedelta(hours=5)
    workflow.schedule_exam(HIS, exam, start=later, station_ae_title="CT2")
    step = exam.scheduled_steps.get()
    assert (step.start, step.station_ae_title) == (later, "CT2")
    assert AuditEvent.objects.filter(requested_procedure=exam, action="exam.scheduled").count() == 2


def test_duplicate_placer_number_is_refused():
    exam = make_exam()
    with pytest.raises(workflow.WorkflowError) as err:
        workflow.place_order(
            HIS,
            exam.order.patient,
            workflow.OrderRequest(
                placer_order_number=exam.order.placer_order_number,
                procedures=[workflow.ProcedureRequest(modality="CT")],
            ),
        )
    assert err.value.code == "duplicate"


def test_duplicate_accession_number_is_refused():
    exam = make_exam()
    with pytest.raises(workflow.WorkflowError, match="accession"):
        workflow.place_order(
            HIS,
            exam.order.patient,
            workflow.OrderRequest(
                procedures=[workflow.ProcedureRequest(modality="CT", accession_number=exam.accession_number)]
            ),
        )


def test_order_without_procedures_is_invalid():
    with pytest.raises(workflow.WorkflowError) as err:
        workflow.place_order(HIS, make_patient(), workflow.OrderRequest())
    assert err.value.code == "invalid"


def test_cancel_before_start_cancels_steps():
    exam = make_exam()
    workflow.cancel_exam(HIS, exam, reason="patient declined")
    exam.refresh_from_db()
    assert exam.status == E.CANCELLED
    assert set(exam.scheduled_steps.values_list("status", flat=True)) == {S.CANCELLED}
    event = AuditEvent.objects.get(requested_procedure=exam, action="exam.cancelled")
    assert (event.actor_kind, event.actor, event.detail["reason"]) == ("hl7", "HIS^HOSP", "patient declined")


def test_cancel_after_mpps_in_progress_is_refused_and_changes_nothing():
    exam = make_exam()
    workflow.start_performed_step(CT1, "1.2.3.9", list(exam.scheduled_steps.all()))
    with pytest.raises(workflow.WorkflowError) as err:
        workflow.cancel_exam(HIS, exam)
    assert err.value.code == "in_progress"
    exam.refresh_from_db()
    assert exam.status == E.IN_PROGRESS
    assert exam.scheduled_steps.get().status == S.STARTED


def test_discontinue_after_start_keeps_performed_data():
    exam = make_exam()
    workflow.start_performed_step(CT1, "1.2.3.10", list(exam.scheduled_steps.all()))
    workflow.discontinue_exam(HIS, exam, reason="contrast reaction")
    exam.refresh_from_db()
    assert exam.status == E.DISCONTINUED
    assert exam.scheduled_steps.get().status == S.DISCONTINUED
    assert exam.scheduled_steps.get().performed_steps.count() == 1


def test_discontinued_exam_can_be_rescheduled_with_a_new_step():
    exam = make_exam()
    workflow.discontinue_exam(HIS, exam)
    workflow.schedule_exam(HIS, exam, start=timezone.now() + dt.timedelta(days=2))
    exam.refresh_from_db()
    assert exam.status == E.SCHEDULED
    statuses = sorted(exam.scheduled_steps.values_list("status", flat=True))
    assert statuses == [S.DISCONTINUED, S.SCHEDULED]


def test_cancelled_exam_cannot_be_scheduled_again():
    exam = make_exam()
    workflow.cancel_exam(HIS, exam)
    with pytest.raises(workflow.WorkflowError, match="CANCELLED"):
        workflow.schedule_exam(HIS, exam, start=timezone.now())


def test_patient_arrival_marks_steps_arrived():
    exam = make_exam()
    workflow.record_patient_arrived(HIS, exam)
    assert exam.scheduled_steps.get().status == S.ARRIVED


# --- performed steps -------------------------------------------------------------------


def test_mpps_in_progress_then_completed_moves_exam_and_steps():
    exam = make_exam()
    performed = workflow.start_performed_step(CT1, "1.2.3.20", list(exam.scheduled_steps.all()))
    exam.refresh_from_db()
    assert exam.status == E.IN_PROGRESS
    assert performed.performed_station_ae_title == "CT1"
    images = [workflow.ExpectedImage("1.2.3.20.1", f"1.2.3.20.1.{i}", "1.2.840.10008.5.1.4.1.1.2") for i in range(3)]
    workflow.complete_performed_step(CT1, performed, images)
    exam.refresh_from_db()
    performed.refresh_from_db()
    assert (exam.status, performed.status) == (E.COMPLETED, P.COMPLETED)
    assert exam.scheduled_steps.get().status == S.COMPLETED
    assert performed.expected_instances.count() == 3


def test_duplicate_mpps_uid_is_refused():
    exam = make_exam()
    workflow.start_performed_step(CT1, "1.2.3.21", list(exam.scheduled_steps.all()))
    with pytest.raises(workflow.WorkflowError) as err:
        workflow.start_performed_step(CT1, "1.2.3.21", list(exam.scheduled_steps.all()))
    assert err.value.code == "duplicate"


def test_completed_mpps_may_no_longer_be_updated():
    exam = make_exam()
    performed = workflow.start_performed_step(CT1, "1.2.3.22", list(exam.scheduled_steps.all()))
    workflow.complete_performed_step(CT1, performed)
    with pytest.raises(workflow.WorkflowError, match="may no longer be updated"):
        workflow.discontinue_performed_step(CT1, performed)


def test_exam_with_two_steps_completes_only_when_both_are_final():
    exam = make_exam(steps=2)
    first, second = exam.scheduled_steps.order_by("pk")
    p1 = workflow.start_performed_step(CT1, "1.2.3.30", [first])
    workflow.complete_performed_step(CT1, p1)
    exam.refresh_from_db()
    assert exam.status == E.IN_PROGRESS
    p2 = workflow.start_performed_step(CT1, "1.2.3.31", [second])
    workflow.discontinue_performed_step(CT1, p2, reason="equipment failure")
    exam.refresh_from_db()
    assert exam.status == E.COMPLETED


def test_discontinued_mpps_without_completed_step_discontinues_exam():
    exam = make_exam()
    performed = workflow.start_performed_step(CT1, "1.2.3.32", list(exam.scheduled_steps.all()))
    workflow.discontinue_performed_step(CT1, performed, reason="patient left")
    exam.refresh_from_db()
    assert exam.status == E.DISCONTINUED


def test_group_case_starts_every_exam_named():
    a, b = make_exam(), make_exam()
    steps = list(ScheduledStep.objects.filter(requested_procedure__in=[a, b]))
    performed = workflow.start_performed_step(CT1, "1.2.3.40", steps)
    workflow.complete_performed_step(CT1, performed)
    assert set(RequestedProcedure.objects.filter(pk__in=[a.pk, b.pk]).values_list("status", flat=True)) == {E.COMPLETED}


def test_append_case_reopens_a_completed_exam():
    exam = make_exam()
    perform(exam, "1.2.3.50")
    workflow.start_performed_step(CT1, "1.2.3.51", list(exam.scheduled_steps.all()))
    exam.refresh_from_db()
    assert exam.status == E.IN_PROGRESS


# --- reading and reports -----------------------------------------------------------------


def ready_exam() -> RequestedProcedure:
    exam = make_exam()
    perform(exam, f"1.2.3.6{RequestedProcedure.objects.count()}")
    return workflow.mark_ready_for_reading(workflow.SYSTEM, exam)


def test_only_a_radiologist_signs():
    exam = ready_exam()
    scheduler = user_with_role("sched", "scheduler")
    with pytest.raises(workflow.WorkflowError) as err:
        workflow.sign_report(workflow.Actor.for_user(scheduler), exam, findings="x", impression="y", final=True)
    assert err.value.code == "permission_denied"
    with pytest.raises(workflow.WorkflowError):
        workflow.sign_report(CT1, exam, findings="x", impression="y", final=True)


def test_preliminary_final_amended_versions_are_kept_immutable(settings):
    settings.RIS_HIS_MLLP = "127.0.0.1:1"
    exam = ready_exam()
    rad = workflow.Actor.for_user(user_with_role("rad", "radiologist"))
    prelim = workflow.sign_report(rad, exam, findings="Dense opacity.", impression="Pneumonia?", final=False)
    final = workflow.sign_report(rad, exam, findings="Dense opacity RLL.", impression="Pneumonia.", final=True)
    amended = workflow.sign_report(
        rad, exam, findings="Dense opacity RLL.", impression="Pneumonia; effusion.", final=True
    )
    exam.refresh_from_db()
    assert exam.status == E.AMENDED
    assert [r.status for r in exam.reports.order_by("version")] == [
        ReportStatus.PRELIMINARY,
        ReportStatus.FINAL,
        ReportStatus.AMENDED,
    ]
    assert (final.supersedes, amended.supersedes) == (prelim, final)
    prelim.refresh_from_db()
    assert prelim.impression == "Pneumonia?"
    assert OutboundMessage.objects.filter(requested_procedure=exam, destination="oru").count() == 3


def test_report_before_images_are_complete_is_refused():
    exam = make_exam()
    perform(exam, "1.2.3.70")
    rad = workflow.Actor.for_user(user_with_role("rad", "radiologist"))
    with pytest.raises(workflow.WorkflowError, match="COMPLETED"):
        workflow.sign_report(rad, exam, findings="x", impression="y", final=True)


def test_draft_is_updated_in_place_and_becomes_the_signed_version():
    exam = ready_exam()
    rad = workflow.Actor.for_user(user_with_role("rad", "radiologist"))
    draft = workflow.save_report_draft(rad, exam, findings="first", impression="")
    again = workflow.save_report_draft(rad, exam, findings="second", impression="")
    assert draft.pk == again.pk and again.findings == "second"
    signed = workflow.sign_report(rad, exam, findings="third", impression="ok", final=True)
    assert signed.pk == draft.pk and signed.status == ReportStatus.FINAL and signed.signed_at
    exam.refresh_from_db()
    assert exam.status == E.FINAL


def test_no_outbox_rows_when_no_destination_is_configured(settings):
    settings.RIS_HIS_MLLP = ""
    settings.RIS_FHIR_BASE_URL = ""
    exam = ready_exam()
    rad = workflow.Actor.for_user(user_with_role("rad", "radiologist"))
    workflow.sign_report(rad, exam, findings="x", impression="y", final=True)
    assert not OutboundMessage.objects.exists()


def test_incomplete_exam_can_be_accepted_by_a_scheduler_with_a_reason():
    exam = make_exam()
    perform(exam, "1.2.3.80")
    RequestedProcedure.objects.filter(pk=exam.pk).update(qa_problem="images missing")
    tech = workflow.Actor.for_user(user_with_role("tech", "technologist"))
    with pytest.raises(workflow.WorkflowError):
        workflow.mark_ready_for_reading(tech, exam, override_reason="series 3 was a scout")
    sched = workflow.Actor.for_user(user_with_role("sched", "scheduler"))
    workflow.mark_ready_for_reading(sched, exam, override_reason="series 3 was a scout")
    exam.refresh_from_db()
    assert (exam.status, exam.qa_problem) == (E.READY_FOR_READING, "")


# --- patients ----------------------------------------------------------------------------


def test_patient_update_changes_demographics_and_announces_open_steps():
    exam = make_exam()
    seen = []

    def receiver(steps, **_):
        seen.extend(steps)

    workflow.scheduled_steps_changed.connect(receiver)
    try:
        workflow.register_patient(HIS, "P1", "HOSP", workflow.Demographics(family_name="Trần", given_name="Thị Bé"))
    finally:
        workflow.scheduled_steps_changed.disconnect(receiver)
    patient = Patient.objects.get(patient_id="P1")
    assert patient.dicom_name == "Trần^Thị Bé"
    assert patient.name_search == "TRAN^THI BE"
    assert [s.pk for s in seen] == list(exam.scheduled_steps.values_list("pk", flat=True))


def test_unchanged_patient_update_writes_no_audit_event():
    make_patient()
    before = AuditEvent.objects.count()
    make_patient()
    assert AuditEvent.objects.count() == before


def test_merge_moves_exams_to_the_survivor_and_keeps_the_old_id():
    exam = make_exam()
    old = exam.order.patient
    survivor = workflow.register_patient(HIS, "P2", "HOSP", workflow.Demographics(family_name="Lê"))
    workflow.merge_patients(HIS, survivor, old)
    exam.refresh_from_db()
    old.refresh_from_db()
    assert exam.order.patient == survivor
    assert old.merged_into == survivor
    assert survivor.identifiers.filter(value="P1", issuer="HOSP").exists()
    assert AuditEvent.objects.filter(action="patient.merged", patient=survivor).exists()
    with pytest.raises(workflow.WorkflowError):
        workflow.register_patient(HIS, "P1", "HOSP", workflow.Demographics(family_name="X"))


def test_patient_without_id_is_invalid():
    with pytest.raises(workflow.WorkflowError) as err:
        workflow.register_patient(HIS, "", "HOSP", workflow.Demographics())
    assert err.value.field == "patient_id"


# --- model constraints -------------------------------------------------------------------


def test_patient_id_is_unique_per_issuer_only():
    Patient.objects.create(patient_id="X1", issuer="A")
    Patient.objects.create(patient_id="X1", issuer="B")
    with pytest.raises(IntegrityError):
        Patient.objects.create(patient_id="X1", issuer="A")


def test_study_instance_uid_is_unique():
    exam = make_exam()
    with pytest.raises(IntegrityError):
        RequestedProcedure.objects.create(
            order=exam.order,
            accession_number="OTHER",
            requested_procedure_id="R",
            study_instance_uid=exam.study_instance_uid,
        )


def test_every_status_change_is_audited_with_old_and_new_status():
    exam = make_exam()
    workflow.cancel_exam(HIS, exam)
    changes = [
        (e.detail.get("old_status"), e.detail.get("new_status"))
        for e in AuditEvent.objects.filter(requested_procedure=exam).order_by("pk")
        if "old_status" in e.detail
    ]
    assert changes == [(E.ORDERED, E.SCHEDULED), (E.SCHEDULED, E.CANCELLED)]


def test_documented_transition_tables_match_the_code():
    """docs/workflow.md is what integration engineers read: it must not drift from the code."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "workflow.md").read_text()
    for table in (workflow.EXAM_TRANSITIONS, workflow.STEP_TRANSITIONS, workflow.PERFORMED_TRANSITIONS):
        for current, allowed in table.items():
            assert f"| {current} | {', '.join(sorted(allowed)) or '— (final)'} |" in text
