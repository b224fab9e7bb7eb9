"""Day board, technologist view, reading and reports, reconciliation, interfaces and
statistics pages (issue 7 §2, §6-§10)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from hl7.models import InboundMessage
from ris import workflow
from ris.models import OutboundMessage, ReportStatus
from ris.timeutil import site_zone
from tests.ui_support import local, make_exam, make_patient, make_room, perform, ready_for_reading


def today():
    return timezone.now().astimezone(site_zone()).date()


@pytest.fixture
def login(client, ui_users):
    def as_role(role):
        client.force_login(ui_users[role])
        return client

    return as_role


# --- day board ------------------------------------------------------------------------


def test_board_lists_todays_exams_by_room_in_time_order(login):
    make_room("CT1")
    later = make_exam(start=local(today(), 23, 50), station="CT1")
    earlier = make_exam(make_patient("P2"), start=local(today(), 0, 10), station="CT1")
    response = login("scheduler").get(reverse("web:board"))
    room = next(r for r in response.context["rooms"] if r.ae_title == "CT1")
    assert [row.exam.accession_number for row in room.rows] == [earlier.accession_number, later.accession_number]


def test_board_counts_exams_per_status(login):
    make_room("CT1")
    make_exam(start=local(today(), 23, 50), station="CT1")
    running = make_exam(make_patient("P2"), start=local(today(), 23, 55), station="CT1")
    perform(running, complete=False)
    counters = dict(login("scheduler").get(reverse("web:board")).context["counters"])
    assert counters["SCHEDULED"] == 1 and counters["IN_PROGRESS"] == 1


def test_board_flags_an_exam_not_started_after_its_slot_as_late(login):
    make_room("CT1")
    start = timezone.now() - dt.timedelta(hours=1)
    if start.astimezone(site_zone()).date() != today():
        pytest.skip("too close to midnight for a late slot today")
    make_exam(start=start, station="CT1")
    response = login("scheduler").get(reverse("web:board"))
    assert response.context["problems"] == 1


def test_board_polling_returns_only_the_live_part(login):
    response = login("scheduler").get(reverse("web:board"), HTTP_HX_REQUEST="true")
    assert response.templates[0].name == "web/board_live.html"


def test_board_shows_exams_waiting_for_a_slot(login):
    exam = make_exam()
    assert exam.accession_number.encode() in login("scheduler").get(reverse("web:board")).content


# --- technologist -----------------------------------------------------------------------


def test_technologist_sees_the_rooms_worklist_and_records_arrival(login):
    make_room("CT1")
    exam = make_exam(start=local(today(), 23, 50), station="CT1")
    client = login("technologist")
    html = client.get(reverse("web:technologist"), {"room": "CT1"}).content.decode()
    assert exam.accession_number in html
    client.post(reverse("web:patient_arrived", args=[exam.accession_number]))
    assert exam.scheduled_steps.get().status == "ARRIVED"


def test_technologist_view_shows_images_expected_and_received(login):
    make_room("CT1")
    exam = make_exam(start=local(today(), 23, 50), station="CT1")
    performed = perform(exam, complete=False)
    workflow.complete_performed_step(
        workflow.Actor.for_ae("CT1"), performed, [workflow.ExpectedImage("1.2.3", f"1.2.3.{i}") for i in range(3)]
    )
    rows = login("technologist").get(reverse("web:technologist"), {"room": "CT1"}).context["rows"]
    assert (rows[0]["expected"], rows[0]["received"]) == (3, 0)


def test_scheduler_cannot_record_arrival(login):
    exam = make_exam(start=local(today(), 23, 50), station="CT1")
    assert login("scheduler").post(reverse("web:patient_arrived", args=[exam.accession_number])).status_code == 403


# --- reading and reports -----------------------------------------------------------


def test_reading_list_puts_stat_first(login):
    routine = ready_for_reading(make_exam(make_patient("P1"), start=local(today(), 8), station="CT1"))
    stat = ready_for_reading(make_exam(make_patient("P2"), start=local(today(), 9), station="CT1", priority="STAT"))
    exams = list(login("radiologist").get(reverse("web:reading_list")).context["exams"])
    assert [e.pk for e in exams] == [stat.pk, routine.pk]


def editor(client, exam, action, findings="Không có tổn thương.", impression="Bình thường."):
    return client.post(
        reverse("web:report_editor", args=[exam.accession_number]),
        {"action": action, "findings": findings, "impression": impression},
    )


def test_draft_is_saved_without_changing_the_exam(login):
    exam = ready_for_reading(make_exam(start=local(today(), 8), station="CT1"))
    editor(login("radiologist"), exam, "draft")
    exam.refresh_from_db()
    assert exam.status == "READY_FOR_READING"
    assert exam.reports.get().status == ReportStatus.DRAFT


def test_signing_final_finalises_the_exam_and_shows_its_delivery(login, settings):
    settings.RIS_HIS_MLLP = "127.0.0.1:1"
    exam = ready_for_reading(make_exam(start=local(today(), 8), station="CT1"))
    client = login("radiologist")
    editor(client, exam, "final")
    exam.refresh_from_db()
    assert exam.status == "FINAL"
    assert OutboundMessage.objects.filter(report__requested_procedure=exam, destination="oru").exists()
    html = client.get(reverse("web:report_editor", args=[exam.accession_number])).content.decode()
    assert 'data-delivery="oru"' in html


def test_preliminary_then_final_then_addendum_keeps_the_signed_text(login):
    exam = ready_for_reading(make_exam(start=local(today(), 8), station="CT1"))
    client = login("radiologist")
    editor(client, exam, "preliminary")
    editor(client, exam, "final", findings="Phổi sáng.")
    editor(client, exam, "addendum", findings="Nốt nhỏ thùy trên phổi phải.", impression="")
    exam.refresh_from_db()
    assert exam.status == "AMENDED"
    assert list(exam.reports.order_by("version").values_list("status", flat=True)) == [
        "PRELIMINARY",
        "FINAL",
        "AMENDED",
    ]
    latest = exam.reports.order_by("-version").first()
    assert latest.findings.startswith("Phổi sáng.") and "Nốt nhỏ thùy trên phổi phải." in latest.findings


def test_correction_after_final_replaces_the_text(login):
    exam = ready_for_reading(make_exam(start=local(today(), 8), station="CT1"))
    client = login("radiologist")
    editor(client, exam, "final", findings="Sai bên.")
    assert b"Sai b" in client.get(reverse("web:report_editor", args=[exam.accession_number]) + "?correct=1").content
    editor(client, exam, "correction", findings="Đúng bên.")
    assert exam.reports.order_by("-version").first().findings == "Đúng bên."


def test_editor_after_final_offers_an_empty_addendum_beside_the_signed_report(login):
    exam = ready_for_reading(make_exam(start=local(today(), 8), station="CT1"))
    client = login("radiologist")
    editor(client, exam, "final", findings="Phổi sáng.")
    response = client.get(reverse("web:report_editor", args=[exam.accession_number]))
    assert response.context["form"].initial == {}
    assert b'data-testid="signed-report"' in response.content and b'value="addendum"' in response.content


def test_signing_an_empty_report_is_a_form_error(login):
    exam = ready_for_reading(make_exam(start=local(today(), 8), station="CT1"))
    response = editor(login("radiologist"), exam, "final", findings="", impression="")
    assert "needs findings or an impression" in str(response.context["form"].errors)


def test_report_editor_shows_prior_reports_of_the_patient(login):
    patient = make_patient()
    prior = ready_for_reading(make_exam(patient, start=local(today(), 8), station="CT1"))
    client = login("radiologist")
    editor(client, prior, "final", findings="Prior findings text")
    current = ready_for_reading(make_exam(patient, start=local(today(), 9), station="CT1"))
    assert b"Prior findings text" in client.get(reverse("web:report_editor", args=[current.accession_number])).content


def test_scheduler_cannot_sign(login):
    exam = ready_for_reading(make_exam(start=local(today(), 8), station="CT1"))
    assert editor(login("scheduler"), exam, "final").status_code == 403


# --- reconciliation --------------------------------------------------------------------


def test_completed_exam_with_missing_images_is_accepted_with_a_reason(login):
    exam = make_exam(start=local(today(), 8), station="CT1")
    perform(exam)
    client = login("scheduler")
    client.post(reverse("web:accept_exam", args=[exam.accession_number]), {"reason": "PACS copy verified"})
    exam.refresh_from_db()
    assert exam.status == "READY_FOR_READING"
    assert exam.audit_events.get(action="exam.ready_for_reading").detail["override_reason"] == "PACS copy verified"


def test_completed_exam_still_short_of_images_after_the_timeout_is_listed(login):
    from ris.models import RequestedProcedure

    exam = make_exam(start=local(today(), 8), station="CT1")
    perform(exam)
    fresh = make_exam(make_patient("P2"), start=local(today(), 9), station="CT1")
    perform(fresh)
    RequestedProcedure.objects.filter(pk=exam.pk).update(status_changed_at=timezone.now() - dt.timedelta(hours=1))
    listed = list(login("scheduler").get(reverse("web:qa")).context["missing_images"])
    assert [e.pk for e in listed] == [exam.pk]


def test_accept_without_a_reason_changes_nothing(login):
    exam = make_exam(start=local(today(), 8), station="CT1")
    perform(exam)
    login("scheduler").post(reverse("web:accept_exam", args=[exam.accession_number]), {"reason": ""})
    exam.refresh_from_db()
    assert exam.status == "COMPLETED"


def test_unscheduled_exam_is_kept_as_its_own_order(login):
    performed = workflow.record_performed_step_started(
        workflow.Actor.for_ae("CT1"),
        workflow.new_uid(),
        [],
        patient=workflow.PerformedPatient("EMERG1", "", workflow.Demographics(family_name="Vô danh")),
        attributes={},
        modality="CT",
    )
    exam = performed.scheduled_steps.get().requested_procedure
    client = login("scheduler")
    assert [e.pk for e in client.get(reverse("web:qa")).context["unscheduled"]] == [exam.pk]
    client.post(reverse("web:keep_exam", args=[exam.accession_number]))
    exam.refresh_from_db()
    assert not exam.needs_reconciliation
    assert list(client.get(reverse("web:qa")).context["unscheduled"]) == []


def test_rejected_hl7_messages_are_listed_with_their_reason(login):
    InboundMessage.objects.create(
        peer="10.0.0.1:5000", raw=b"MSH|...", outcome="AE", error="PID-3 missing", control_id="C1"
    )
    InboundMessage.objects.create(peer="10.0.0.1:5000", raw=b"MSH|...", outcome="AA", control_id="C2")
    rejected = list(login("scheduler").get(reverse("web:qa")).context["rejected"])
    assert [m.control_id for m in rejected] == ["C1"]


# --- interfaces, statistics ----------------------------------------------------------


def test_interfaces_page_shows_health_journal_and_raw_message(login):
    message = InboundMessage.objects.create(
        peer="127.0.0.1:1",
        raw=b"MSH|^~\\&|HIS|H|RIS|R|||ORM^O01|M1|P|2.3.1\rPID|||P1",
        control_id="M1",
        message_type="ORM^O01",
        outcome="AA",
    )
    client = login("admin")
    response = client.get(reverse("web:interfaces"), {"q": "M1"})
    assert response.context["health"]["database"] == "ok"
    assert [m.pk for m in response.context["page"]] == [message.pk]
    assert b"PID|||P1" in client.get(reverse("web:hl7_message", args=[message.pk])).content


def test_admin_retries_a_failed_outbound_message(login):
    exam = ready_for_reading(make_exam(start=local(today(), 8), station="CT1"))
    message = OutboundMessage.objects.create(
        destination="oru",
        requested_procedure=exam,
        message_control_id="R1-oru",
        status="FAILED",
        attempts=5,
        last_error="AR",
    )
    client = login("admin")
    assert b'value="%d"' % message.pk in client.get(reverse("web:interfaces")).content
    client.post(reverse("web:outbox_retry"), {"message": [message.pk]})
    message.refresh_from_db()
    assert (message.status, message.attempts) == ("PENDING", 0)
    assert exam.audit_events.filter(action="outbox.retried", actor="admin").exists()


def test_statistics_report_turnaround_per_modality(login):
    exam = ready_for_reading(make_exam(start=local(today(), 8), station="CT1"))
    editor(login("radiologist"), exam, "final")
    response = login("admin").get(reverse("web:statistics"))
    row = next(r for r in response.context["turnaround"]["rows"] if r["modality"] == "CT")
    assert row["count"] == 1 and row["order_to_scan"] is not None and row["scan_to_final"] is not None


def test_statistics_page_bundles_its_chart_library_locally(login):
    html = login("admin").get(reverse("web:statistics")).content.decode()
    assert "/static/web/vendor/chart-4.6.1.umd.min.js" in html
    assert "https://" not in html and "http://" not in html


def test_statistics_break_turnaround_down_per_day_and_modality(login):
    exam = ready_for_reading(make_exam(start=local(today(), 8), station="CT1"))
    editor(login("radiologist"), exam, "final")
    turnaround = login("admin").get(reverse("web:statistics")).context["turnaround"]
    [row] = turnaround["by_day"]
    ct = row["cells"][turnaround["modalities"].index("CT")]
    assert row["day"] == today() and ct["order_to_scan"] is not None and ct["scan_to_final"] is not None


def test_board_poll_is_not_rendered_again_while_nothing_changed(login):
    make_room("CT1")
    exam = make_exam(start=local(today(), 23, 50), station="CT1")
    client = login("scheduler")
    first = client.get(reverse("web:board"), HTTP_HX_REQUEST="true")
    etag = first["ETag"]
    again = client.get(reverse("web:board"), HTTP_HX_REQUEST="true", HTTP_IF_NONE_MATCH=etag)
    if again.status_code == 200:  # the minute turned between the two requests
        etag = again["ETag"]
        again = client.get(reverse("web:board"), HTTP_HX_REQUEST="true", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    perform(exam, complete=False)
    changed = client.get(reverse("web:board"), HTTP_HX_REQUEST="true", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and b'data-status="IN_PROGRESS"' in changed.content


def test_scheduler_matches_an_unscheduled_exam_to_its_order(client, ui_users):
    """Reconciliation page: the MPPS of a walk-in exam moves to the scheduled exam it was meant to be."""
    from ris.models import ExamStatus, RequestedProcedure
    from tests.test_workflow import CT1
    from tests.test_workflow import make_exam as scheduled_exam

    target = scheduled_exam()
    walk_in = workflow.PerformedPatient(patient_id="P1", issuer="HOSP")
    unscheduled_performed = workflow.record_performed_step_started(
        CT1, "1.2.3.999", [], patient=walk_in, attributes={}, modality="CT"
    )
    unscheduled = unscheduled_performed.scheduled_steps.get().requested_procedure
    assert unscheduled.needs_reconciliation
    client.force_login(ui_users["scheduler"])
    page = client.get(reverse("web:qa")).content.decode()
    assert reverse("web:reconcile_exam", args=[unscheduled.accession_number]) in page
    bad = client.post(
        reverse("web:reconcile_exam", args=[unscheduled.accession_number]), {"target": "NOPE"}, follow=True
    )
    assert "NOPE" in bad.content.decode()
    client.post(reverse("web:reconcile_exam", args=[unscheduled.accession_number]), {"target": target.accession_number})
    assert RequestedProcedure.objects.get(pk=target.pk).status == ExamStatus.IN_PROGRESS
    assert not RequestedProcedure.objects.get(pk=unscheduled.pk).needs_reconciliation


def test_technologist_may_not_reconcile(client, ui_users):
    from tests.test_workflow import make_exam as scheduled_exam

    exam = scheduled_exam()
    client.force_login(ui_users["technologist"])
    response = client.post(reverse("web:reconcile_exam", args=[exam.accession_number]), {"target": "X"})
    assert response.status_code in (302, 403)
    assert response.status_code == 403 or "login" in response["Location"]
