"""Scheduling in the UI (issue 7 §3): free slots, schedule/reschedule with conflict and
opening-hours checks, cancel and discontinue, all through the workflow core and audited."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

import pytest
from django.urls import reverse

from ris.models import AuditEvent, ScheduledStep
from tests.ui_support import local, make_exam, make_procedure, make_room, perform, tomorrow


@pytest.fixture
def scheduler(client, ui_users):
    client.force_login(ui_users["scheduler"])
    return client


@pytest.fixture
def room(db):
    make_procedure("CTHEAD", "CT", minutes=30)
    return make_room("CT1", "CT", dt.time(8, 0), dt.time(12, 0))


def schedule(client, exam, day, time, room="CT1"):
    return client.post(
        reverse("web:schedule_exam", args=[exam.accession_number]),
        {"station_ae_title": room, "date": day.isoformat(), "time": time},
    )


def test_scheduling_an_ordered_exam_puts_its_step_in_the_slot(scheduler, room):
    exam = make_exam()
    response = schedule(scheduler, exam, tomorrow(), "09:00")
    assert response.status_code == 302
    exam.refresh_from_db()
    step = exam.scheduled_steps.get()
    assert exam.status == "SCHEDULED"
    assert (step.station_ae_title, step.start) == ("CT1", local(tomorrow(), 9))
    assert step.station_name == "CT1_ST"


def test_scheduling_is_audited_with_the_user(scheduler, room):
    exam = make_exam()
    schedule(scheduler, exam, tomorrow(), "09:00")
    event = AuditEvent.objects.filter(requested_procedure=exam, action="exam.scheduled").get()
    assert event.actor == "scheduler"


def test_overlapping_slot_is_refused_naming_the_other_exam(scheduler, room):
    booked = make_exam(start=local(tomorrow(), 9), station="CT1")
    exam = make_exam()
    response = schedule(scheduler, exam, tomorrow(), "09:20")
    assert response.status_code == 200
    assert f"exam {booked.accession_number}".encode() in response.content
    exam.refresh_from_db()
    assert exam.status == "ORDERED"


def test_slot_right_after_another_exam_is_free(scheduler, room):
    make_exam(start=local(tomorrow(), 9), station="CT1")
    exam = make_exam()
    assert schedule(scheduler, exam, tomorrow(), "09:30").status_code == 302


def test_slot_outside_the_room_opening_hours_is_refused(scheduler, room):
    exam = make_exam()
    response = schedule(scheduler, exam, tomorrow(), "11:45")
    assert b"is open 08:00-12:00" in response.content
    exam.refresh_from_db()
    assert exam.status == "ORDERED"


def test_free_slots_skip_booked_time_and_closed_hours(scheduler, room):
    make_exam(start=local(tomorrow(), 9), station="CT1")
    exam = make_exam()
    response = scheduler.get(
        reverse("web:schedule_exam", args=[exam.accession_number]), {"room": "CT1", "day": tomorrow().isoformat()}
    )
    times = [s.strftime("%H:%M") for s in response.context["slots"]]
    assert times[0] == "08:00"
    assert "08:30" in times and "08:40" not in times and "09:20" not in times and "09:30" in times
    assert times[-1] == "11:30"


def test_rescheduling_moves_the_same_step_to_the_new_slot(scheduler, room):
    make_room("CT2", "CT")
    exam = make_exam(start=local(tomorrow(), 9), station="CT1")
    step_id = exam.scheduled_steps.get().pk
    assert schedule(scheduler, exam, tomorrow(), "10:00", room="CT2").status_code == 302
    step = ScheduledStep.objects.get(pk=step_id)
    assert (step.station_ae_title, step.start) == ("CT2", local(tomorrow(), 10))


def test_exam_in_progress_cannot_be_rescheduled(scheduler, room):
    exam = make_exam(start=local(tomorrow(), 9), station="CT1")
    perform(exam, complete=False)
    response = schedule(scheduler, exam, tomorrow(), "10:00")
    assert b"in progress" in response.content
    assert exam.scheduled_steps.get().start == local(tomorrow(), 9)


def test_cancel_takes_the_exam_off_the_worklist(scheduler, room):
    exam = make_exam(start=local(tomorrow(), 9), station="CT1")
    scheduler.post(reverse("web:cancel_exam", args=[exam.accession_number]), {"reason": "patient declined"})
    exam.refresh_from_db()
    assert exam.status == "CANCELLED"
    assert exam.scheduled_steps.get().status == "CANCELLED"


def test_cancel_during_the_exam_is_refused_with_the_reason(scheduler, room):
    exam = make_exam(start=local(tomorrow(), 9), station="CT1")
    perform(exam, complete=False)
    response = scheduler.post(reverse("web:cancel_exam", args=[exam.accession_number]), follow=True)
    assert b"in progress at the modality" in response.content
    exam.refresh_from_db()
    assert exam.status == "IN_PROGRESS"


def test_discontinue_stops_an_exam_in_progress(scheduler, room):
    exam = make_exam(start=local(tomorrow(), 9), station="CT1")
    perform(exam, complete=False)
    scheduler.post(reverse("web:discontinue_exam", args=[exam.accession_number]), {"reason": "contrast reaction"})
    exam.refresh_from_db()
    assert exam.status == "DISCONTINUED"


def test_technologist_cannot_schedule(client, ui_users, room):
    client.force_login(ui_users["technologist"])
    exam = make_exam()
    assert schedule(client, exam, tomorrow(), "09:00").status_code == 403
    exam.refresh_from_db()
    assert exam.status == "ORDERED"


def test_calendar_shows_bookings_in_room_columns_and_waiting_exams(scheduler, room):
    booked = make_exam(start=local(tomorrow(), 9), station="CT1")
    waiting = make_exam()
    html = scheduler.get(reverse("web:calendar"), {"day": tomorrow().isoformat()}).content.decode()
    assert reverse("web:exam_detail", args=[booked.accession_number]) in html
    assert reverse("web:schedule_exam", args=[waiting.accession_number]) in html


def test_week_view_shows_seven_days_of_one_room(scheduler, room):
    response = scheduler.get(reverse("web:calendar"), {"view": "week", "room": "CT1", "day": tomorrow().isoformat()})
    assert len(response.context["columns"]) == 7


def test_station_rule_editor_adds_a_rule(scheduler, room):
    data = {
        "section": "rules",
        "rules-TOTAL_FORMS": "1",
        "rules-INITIAL_FORMS": "0",
        "rules-0-priority": "10",
        "rules-0-modality": "CT",
        "rules-0-procedure_code": "",
        "rules-0-station_ae_title": "CT1",
        "rules-0-enabled": "on",
    }
    response = scheduler.post(reverse("web:settings"), data)
    assert response.status_code == 302
    from ris.models import StationRule

    assert StationRule.objects.get().station_ae_title == "CT1"


def test_room_opening_hours_are_edited_in_settings(scheduler, room):
    data = {
        "section": "rooms",
        "rooms-TOTAL_FORMS": "1",
        "rooms-INITIAL_FORMS": "1",
        "rooms-0-id": str(room.pk),
        "rooms-0-opens_at": "06:30",
        "rooms-0-closes_at": "22:00",
        "rooms-0-location": "Tầng 1",
        "rooms-0-enabled": "on",
    }
    assert scheduler.post(reverse("web:settings"), data).status_code == 302
    room.refresh_from_db()
    assert (room.opens_at, room.closes_at, room.location) == (dt.time(6, 30), dt.time(22, 0), "Tầng 1")


# --- booking a free cell of the calendar -------------------------------------------------------


def slot_url(room: str, day: dt.date, time: str) -> str:
    return f"{reverse('web:calendar_slot')}?{urlencode({'room': room, 'start': f'{day.isoformat()}T{time}'})}"


def test_calendar_free_cells_link_to_booking_that_room_and_time_but_not_booked_ones(scheduler, room):
    make_exam(start=local(tomorrow(), 9), station="CT1")  # CT head: 30 min, 09:00-09:30
    html = scheduler.get(reverse("web:calendar"), {"day": tomorrow().isoformat()}).content.decode()
    day = tomorrow().isoformat()
    assert f'data-free-slot="CT1 {day} 08:50"' in html and f'data-free-slot="CT1 {day} 09:30"' in html
    assert f'data-free-slot="CT1 {day} 09:00"' not in html and f'data-free-slot="CT1 {day} 09:20"' not in html
    assert slot_url("CT1", tomorrow(), "09:30").replace("&", "&amp;") in html


def test_slot_page_books_a_waiting_exam_into_the_clicked_cell_and_returns_to_the_calendar(scheduler, room):
    exam = make_exam()
    make_exam(modality="MR", code="MRBRAIN")  # another modality: not offered for a CT room
    page = scheduler.get(slot_url("CT1", tomorrow(), "10:10"))
    assert page.context["candidates"] == [{"exam": exam, "minutes": 30, "problem": ""}]
    form = dict(station_ae_title="CT1", date=tomorrow().isoformat(), time="10:10", next=page.context["back"])
    response = scheduler.post(reverse("web:schedule_exam", args=[exam.accession_number]), form)
    assert response["Location"] == page.context["back"]
    assert page.context["back"].startswith(reverse("web:calendar"))
    exam.refresh_from_db()
    step = exam.scheduled_steps.get()
    assert (exam.status, step.station_ae_title, step.start) == ("SCHEDULED", "CT1", local(tomorrow(), 10, 10))


def test_slot_page_says_why_an_exam_does_not_fit_the_cell(scheduler, room):
    make_exam()
    page = scheduler.get(slot_url("CT1", tomorrow(), "11:40"))  # 30 minutes from 11:40: closes at 12:00
    (candidate,) = page.context["candidates"]
    assert "does not fit at 11:40" in candidate["problem"]
    assert b"Book 11:40" not in page.content


def test_other_time_opens_the_scheduling_page_prefilled_with_the_cell(scheduler, room):
    exam = make_exam()
    url = reverse("web:schedule_exam", args=[exam.accession_number])
    form = scheduler.get(url, {"room": "CT1", "day": tomorrow().isoformat(), "time": "10:10"}).context["form"]
    assert (form.initial["station_ae_title"], form.initial["date"], form.initial["time"]) == (
        "CT1",
        tomorrow(),
        "10:10",
    )
    assert "time" not in scheduler.get(url, {"time": "25:99"}).context["form"].initial


def test_slot_page_without_a_valid_cell_goes_back_to_the_calendar(scheduler, room):
    assert scheduler.get(slot_url("NOPE", tomorrow(), "10:00"))["Location"] == reverse("web:calendar")
    assert scheduler.get(slot_url("CT1", tomorrow(), "10h"))["Location"] == reverse("web:calendar")


def test_slot_page_is_for_schedulers(client, ui_users, room):
    for role, status in (("technologist", 403), ("radiologist", 403), ("admin", 200)):
        client.force_login(ui_users[role])
        assert client.get(slot_url("CT1", tomorrow(), "10:00")).status_code == status
