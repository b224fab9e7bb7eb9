"""Room calendars: how long each exam takes, what a room has booked, where a slot is free.

Read-only queries the scheduling pages use before calling ris.workflow.schedule_exam:
a booking is an open or running scheduled step on a station, lasting the duration of its
procedure in the catalogue (ris.models.ProcedureType). Times are in RIS_TIME_ZONE.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ris.models import ProcedureType, RequestedProcedure, ScheduledStep, StepStatus
from ris.timeutil import local_day_bounds, site_zone
from worklist.models import Modality

DEFAULT_DURATION_MINUTES = 20
# Rooms without opening hours are shown (not enforced) with this working day.
DEFAULT_OPENS_AT = dt.time(7, 0)
DEFAULT_CLOSES_AT = dt.time(19, 0)
SLOT_GRID_MINUTES = 10
# Steps that occupy a room: waiting, arrived or being performed (not cancelled or finished badly).
OCCUPYING_STEP_STATUSES = (StepStatus.SCHEDULED, StepStatus.ARRIVED, StepStatus.STARTED, StepStatus.COMPLETED)


@dataclass
class Booking:
    step: ScheduledStep
    start: dt.datetime
    end: dt.datetime

    @property
    def exam(self) -> RequestedProcedure:
        return self.step.requested_procedure


def duration_of(exam: RequestedProcedure) -> int:
    """Minutes the exam takes: its catalogue entry, else the default."""
    return durations_of([exam]).get(exam.pk, DEFAULT_DURATION_MINUTES)


def durations_of(exams) -> dict[int, int]:
    codes = {e.procedure_code for e in exams if e.procedure_code}
    catalogue = {p.code: p.duration_minutes for p in ProcedureType.objects.filter(code__in=codes)}
    return {e.pk: catalogue.get(e.procedure_code, DEFAULT_DURATION_MINUTES) for e in exams}


def bookings(station_ae_title: str, start: dt.datetime, end: dt.datetime) -> list[Booking]:
    """Steps on a station that overlap [start, end), in time order."""
    # A booking may start up to the longest procedure before `start` and still overlap.
    longest = max([DEFAULT_DURATION_MINUTES, *ProcedureType.objects.values_list("duration_minutes", flat=True)])
    steps = list(
        ScheduledStep.objects.filter(
            station_ae_title=station_ae_title,
            status__in=OCCUPYING_STEP_STATUSES,
            start__gte=start - dt.timedelta(minutes=longest),
            start__lt=end,
        )
        .select_related("requested_procedure__order__patient")
        .order_by("start")
    )
    minutes = durations_of([s.requested_procedure for s in steps])
    result = []
    for step in steps:
        step_end = step.start + dt.timedelta(minutes=minutes[step.requested_procedure_id])
        if step_end > start:
            result.append(Booking(step, step.start, step_end))
    return result


def conflicts(
    station_ae_title: str, start: dt.datetime, minutes: int, exam: RequestedProcedure | None = None
) -> list[Booking]:
    """Bookings of other exams that overlap the slot [start, start + minutes)."""
    end = start + dt.timedelta(minutes=minutes)
    return [
        b for b in bookings(station_ae_title, start, end) if exam is None or b.step.requested_procedure_id != exam.pk
    ]


def opening_hours(room: Modality) -> tuple[dt.time, dt.time]:
    return room.opens_at or DEFAULT_OPENS_AT, room.closes_at or DEFAULT_CLOSES_AT


def outside_opening_hours(room: Modality, start: dt.datetime, minutes: int) -> bool:
    """True when the room has opening hours and the slot is not inside them."""
    if room.opens_at is None or room.closes_at is None:
        return False
    local = start.astimezone(site_zone())
    end = local + dt.timedelta(minutes=minutes)
    return local.time() < room.opens_at or end.date() != local.date() or end.time() > room.closes_at


def free_slots(room: Modality, day: dt.date, minutes: int, exam: RequestedProcedure | None = None) -> list[dt.datetime]:
    """Start times on the grid, inside the room's hours, where the exam fits without overlap."""
    opens, closes = opening_hours(room)
    zone = site_zone()
    first = dt.datetime.combine(day, opens, tzinfo=zone)
    last = dt.datetime.combine(day, closes, tzinfo=zone) - dt.timedelta(minutes=minutes)
    day_start, day_end = local_day_bounds(day)
    booked = [
        b
        for b in bookings(room.ae_title, day_start, day_end)
        if exam is None or b.step.requested_procedure_id != exam.pk
    ]
    now = dt.datetime.now(zone)
    slots, moment = [], first
    while moment <= last:
        end = moment + dt.timedelta(minutes=minutes)
        if moment >= now and not any(b.start < end and b.end > moment for b in booked):
            slots.append(moment)
        moment += dt.timedelta(minutes=SLOT_GRID_MINUTES)
    return slots


def rooms_for(modality: str = "") -> list[Modality]:
    rooms = Modality.objects.filter(enabled=True)
    return list(rooms.filter(modality=modality) if modality else rooms)


@dataclass
class RoomDay:
    """One room's column on a calendar day: hours and bookings."""

    room: Modality
    day: dt.date
    opens: dt.time
    closes: dt.time
    bookings: list[Booking]


def room_day(room: Modality, day: dt.date) -> RoomDay:
    opens, closes = opening_hours(room)
    start, end = local_day_bounds(day)
    return RoomDay(room, day, opens, closes, bookings(room.ae_title, start, end))
