"""Scheduling (issue 7 §3): room calendars, schedule/reschedule into a slot, cancel, discontinue.

Every change goes through ris.workflow (which audits it and refreshes the worklist); the
views only add what a person needs to choose well: free slots, opening hours, conflicts.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

from django.contrib import messages
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.formats import time_format
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from ris import workflow
from ris.models import ExamStatus, RequestedProcedure
from ris.timeutil import site_zone
from web import scheduling
from web.access import SCHEDULE, requires
from web.forms import ReasonForm, ScheduleForm
from web.views.common import actor_of, add_workflow_error, get_exam, parse_day, safe_next
from worklist.models import Modality


def _span(
    start: dt.datetime, end: dt.datetime, day: dt.date, opens: dt.time, closes: dt.time, min_height: float = 2.0
) -> dict:
    """Top and height of a time span on a calendar column, in % of the opening hours (a booking
    stays at least `min_height` tall to be readable)."""
    zone = site_zone()
    first = dt.datetime.combine(day, opens, tzinfo=zone)
    span = (dt.datetime.combine(day, closes, tzinfo=zone) - first).total_seconds() or 1
    top = (start - first).total_seconds() / span * 100
    height = (end - start).total_seconds() / span * 100
    return {"top": max(0.0, min(top, 100.0)), "height": max(min_height, min(height, 100.0 - top))}


def _position(booking: scheduling.Booking, day: dt.date, opens: dt.time, closes: dt.time) -> dict:
    return {"booking": booking, **_span(booking.start, booking.end, day, opens, closes)}


def _free_cell(room: Modality, start: dt.datetime, day: dt.date, opens: dt.time, closes: dt.time) -> dict:
    """A free grid cell of a column: where it sits, and its link to book it."""
    end = start + dt.timedelta(minutes=scheduling.SLOT_GRID_MINUTES)
    cell = _span(start, end, day, opens, closes, min_height=0.0)
    query = urlencode({"room": room.ae_title, "start": start.strftime("%Y-%m-%dT%H:%M")})
    return {**cell, "start": start, "url": f"{reverse('web:calendar_slot')}?{query}"}


def _column(room: Modality, day: dt.date, opens: dt.time, closes: dt.time) -> dict:
    room_day = scheduling.room_day(room, day)
    free = scheduling.free_slots(room, day, scheduling.SLOT_GRID_MINUTES)
    return {
        "room": room,
        "day": day,
        "opens": room_day.opens,
        "closes": room_day.closes,
        "blocks": [_position(b, day, opens, closes) for b in room_day.bookings],
        "free": [_free_cell(room, start, day, opens, closes) for start in free],
    }


@requires(SCHEDULE)
def calendar(request):
    """Day view: one column per room. Week view: one room, one column per day."""
    day = parse_day(request.GET.get("day"))
    view = "week" if request.GET.get("view") == "week" else "day"
    rooms = scheduling.rooms_for()
    room = next((r for r in rooms if r.ae_title == request.GET.get("room")), rooms[0] if rooms else None)
    opens = min([scheduling.opening_hours(r)[0] for r in rooms] or [scheduling.DEFAULT_OPENS_AT])
    closes = max([scheduling.opening_hours(r)[1] for r in rooms] or [scheduling.DEFAULT_CLOSES_AT])
    if view == "week" and room is not None:
        monday = day - dt.timedelta(days=day.weekday())
        columns = [_column(room, monday + dt.timedelta(days=i), opens, closes) for i in range(7)]
        step = dt.timedelta(days=7)
    else:
        columns = [_column(r, day, opens, closes) for r in rooms]
        step = dt.timedelta(days=1)
    hours = [dt.time(h) for h in range(opens.hour, closes.hour + (1 if closes.minute else 0))]
    span_minutes = (closes.hour * 60 + closes.minute) - (opens.hour * 60 + opens.minute) or 1
    hour_marks = [
        {"label": time_format(h, "H:i"), "top": ((h.hour * 60) - (opens.hour * 60 + opens.minute)) / span_minutes * 100}
        for h in hours
    ]
    waiting = (
        RequestedProcedure.objects.filter(status__in=[ExamStatus.ORDERED, ExamStatus.DISCONTINUED])
        .select_related("order__patient")
        .order_by("created_at")[:100]
    )
    return render(
        request,
        "web/calendar.html",
        {
            "day": day,
            "view": view,
            "room": room,
            "rooms": rooms,
            "columns": columns,
            "hour_marks": hour_marks,
            "previous_day": day - step,
            "next_day": day + step,
            "waiting": waiting,
        },
    )


def _parse_slot(value: str) -> dt.datetime | None:
    """A local "YYYY-MM-DDTHH:MM" from a calendar cell, in the site's zone."""
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M").replace(tzinfo=site_zone())
    except (TypeError, ValueError):
        return None


@requires(SCHEDULE)
def calendar_slot(request):
    """A free cell clicked on the calendar: the exams waiting for a slot that could take this
    room and time, each booked with one click (through schedule_exam) or adjusted there."""
    room = next((r for r in scheduling.rooms_for() if r.ae_title == request.GET.get("room")), None)
    start = _parse_slot(request.GET.get("start", ""))
    if room is None or start is None:
        messages.error(request, _("Choose a free slot on the calendar."))
        return redirect("web:calendar")
    waiting = (
        RequestedProcedure.objects.filter(status__in=[ExamStatus.ORDERED, ExamStatus.DISCONTINUED])
        .select_related("order__patient")
        .order_by("created_at")
    )
    same_modality = [e for e in waiting.filter(modality=room.modality)[:100]]
    candidates = [
        {"exam": e, "minutes": scheduling.duration_of(e), "problem": _slot_problem(e, room, start)}
        for e in same_modality
    ]
    back = f"{reverse('web:calendar')}?{urlencode({'room': room.ae_title, 'day': start.date().isoformat()})}"
    return render(
        request,
        "web/calendar_slot.html",
        {"room": room, "start": start, "candidates": candidates, "back": back},
    )


def _rooms_for_exam(exam: RequestedProcedure) -> list[Modality]:
    return scheduling.rooms_for(exam.modality) or scheduling.rooms_for()


def _slot_problem(exam: RequestedProcedure, room: Modality, start: dt.datetime) -> str:
    """Why a slot cannot be taken (outside the room's hours, overlaps another exam), or ""."""
    minutes = scheduling.duration_of(exam)
    if scheduling.outside_opening_hours(room, start, minutes):
        return _("%(room)s is open %(opens)s-%(closes)s; a %(minutes)d-minute exam does not fit at %(time)s.") % {
            "room": room.ae_title,
            "opens": time_format(room.opens_at, "H:i"),
            "closes": time_format(room.closes_at, "H:i"),
            "minutes": minutes,
            "time": time_format(start.astimezone(site_zone()), "H:i"),
        }
    clash = scheduling.conflicts(room.ae_title, start, minutes, exam)
    if clash:
        other = clash[0]
        return _("Conflict: %(room)s is booked %(start)s-%(end)s for exam %(accession)s.") % {
            "room": room.ae_title,
            "start": time_format(other.start.astimezone(site_zone()), "H:i"),
            "end": time_format(other.end.astimezone(site_zone()), "H:i"),
            "accession": other.exam.accession_number,
        }
    return ""


@requires(SCHEDULE)
def schedule_exam(request, accession: str):
    """Schedule an ORDERED exam, or move a SCHEDULED/DISCONTINUED one, into a free slot."""
    exam = get_exam(accession)
    rooms = _rooms_for_exam(exam)
    current = exam.scheduled_steps.exclude(start=None).order_by("-id").first()
    day = parse_day(request.GET.get("day"))
    room_ae = (
        request.GET.get("room") or (current.station_ae_title if current else "") or (rooms[0].ae_title if rooms else "")
    )
    room = next((r for r in rooms if r.ae_title == room_ae), rooms[0] if rooms else None)
    if request.method == "POST":
        form = ScheduleForm(request.POST, rooms=rooms)
        if form.is_valid():
            problem = _slot_problem(exam, form.room, form.start)
            if problem:
                form.add_error(None, problem)
            else:
                try:
                    workflow.schedule_exam(
                        actor_of(request),
                        exam,
                        start=form.start,
                        station_ae_title=form.room.ae_title,
                        station_name=form.room.station_name,
                        location=form.room.location,
                    )
                except workflow.WorkflowError as error:
                    add_workflow_error(form, error)
                else:
                    messages.success(
                        request,
                        _("Exam %(accession)s scheduled in %(room)s; the worklist is updated.")
                        % {"accession": exam.accession_number, "room": form.room.ae_title},
                    )
                    if request.POST.get("next"):
                        return redirect(safe_next(request, "web:calendar"))
                    return redirect("web:exam_detail", accession=exam.accession_number)
    else:
        initial = {"station_ae_title": room.ae_title if room else "", "date": day}
        if _parse_slot(f"{day.isoformat()}T{request.GET.get('time', '')}"):
            initial["time"] = request.GET["time"]  # a calendar cell's time, prefilled
        form = ScheduleForm(initial=initial, rooms=rooms)
    minutes = scheduling.duration_of(exam)
    slots = scheduling.free_slots(room, day, minutes, exam) if room else []
    return render(
        request,
        "web/schedule_exam.html",
        {
            "exam": exam,
            "form": form,
            "room": room,
            "rooms": rooms,
            "day": day,
            "previous_day": day - dt.timedelta(days=1),
            "next_day": day + dt.timedelta(days=1),
            "slots": slots,
            "minutes": minutes,
            "current": current,
            "can_schedule": exam.status in workflow.EXAM_TRANSITIONS
            and ExamStatus.SCHEDULED in workflow.EXAM_TRANSITIONS[exam.status],
        },
    )


def _change_status(request, accession: str, change, done_message: str):
    exam = get_exam(accession)
    form = ReasonForm(request.POST)
    if form.is_valid():
        try:
            change(actor_of(request), exam, reason=form.cleaned_data["reason"])
        except workflow.WorkflowError as error:
            messages.error(request, error.reason)
        else:
            messages.success(request, done_message % {"accession": exam.accession_number})
    return redirect("web:exam_detail", accession=exam.accession_number)


@require_POST
@requires(SCHEDULE)
def cancel_exam(request, accession: str):
    return _change_status(request, accession, workflow.cancel_exam, _("Exam %(accession)s cancelled."))


@require_POST
@requires(SCHEDULE)
def discontinue_exam(request, accession: str):
    return _change_status(request, accession, workflow.discontinue_exam, _("Exam %(accession)s discontinued."))
