"""The day board: today's exams by room in time order, with counters and problem flags."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from dataclasses import dataclass, field

from django.db.models import Count, Max
from django.utils import timezone
from django.utils.translation import gettext as _

from ris.models import ExamStatus, RequestedProcedure, ScheduledStep, StepStatus
from ris.timeutil import local_day_bounds
from web import scheduling
from worklist.models import Modality

# A scheduled exam not started this long after its slot counts as late.
LATE_AFTER = dt.timedelta(minutes=15)
COUNTED_STATUSES = [
    ExamStatus.ORDERED,
    ExamStatus.SCHEDULED,
    ExamStatus.IN_PROGRESS,
    ExamStatus.COMPLETED,
    ExamStatus.READY_FOR_READING,
    ExamStatus.PRELIMINARY,
    ExamStatus.FINAL,
]


@dataclass
class BoardRow:
    step: ScheduledStep
    exam: RequestedProcedure
    end: dt.datetime | None
    problem: str = ""


@dataclass
class BoardRoom:
    ae_title: str
    label: str
    modality: str
    rows: list[BoardRow] = field(default_factory=list)


def problem_of(exam: RequestedProcedure, step: ScheduledStep, now: dt.datetime) -> str:
    if exam.qa_problem:
        return exam.qa_problem
    if exam.needs_reconciliation:
        return _("needs reconciliation")
    if exam.status == ExamStatus.DISCONTINUED:
        return _("discontinued")
    if step.status in (StepStatus.SCHEDULED, StepStatus.ARRIVED) and step.start and step.start + LATE_AFTER < now:
        return _("late")
    return ""


def day_board(day: dt.date) -> dict:
    """Rooms with their steps of the day, the counters and the exams still waiting for a slot."""
    start, end = local_day_bounds(day)
    now = timezone.now()
    steps = list(
        ScheduledStep.objects.filter(start__gte=start, start__lt=end)
        .exclude(status=StepStatus.CANCELLED)
        .select_related("requested_procedure__order__patient")
        .order_by("start", "id")
    )
    minutes = scheduling.durations_of([s.requested_procedure for s in steps])
    rooms: dict[str, BoardRoom] = {
        m.ae_title: BoardRoom(m.ae_title, m.location or m.station_name or m.ae_title, m.modality)
        for m in Modality.objects.filter(enabled=True)
    }
    seen: set[int] = set()
    counts: Counter[str] = Counter()
    problems = 0
    for step in steps:
        exam = step.requested_procedure
        room = rooms.setdefault(
            step.station_ae_title or "", BoardRoom(step.station_ae_title, step.station_ae_title or _("No room"), "")
        )
        row = BoardRow(step, exam, step.start + dt.timedelta(minutes=minutes[exam.pk]), problem_of(exam, step, now))
        room.rows.append(row)
        if exam.pk not in seen:
            seen.add(exam.pk)
            counts[exam.status] += 1
            problems += bool(row.problem)
    waiting = list(
        RequestedProcedure.objects.filter(status=ExamStatus.ORDERED)
        .select_related("order__patient")
        .order_by("created_at")[:50]
    )
    counters = [(s, counts.get(s, 0)) for s in COUNTED_STATUSES if s != ExamStatus.ORDERED]
    return {
        "rooms": list(rooms.values()),
        "counters": counters,
        "problems": problems,
        "waiting": waiting,
        "waiting_count": RequestedProcedure.objects.filter(status=ExamStatus.ORDERED).count(),
        "total": len(seen),
        "now": now,
    }


def board_fingerprint(day: dt.date) -> str:
    """Changes whenever anything the board shows for `day` changes: the newest step or exam
    change of the day, the waiting list, and the minute (late flags move with the clock)."""
    start, end = local_day_bounds(day)
    steps = ScheduledStep.objects.filter(start__gte=start, start__lt=end).aggregate(
        changed=Max("updated_at"), exams_changed=Max("requested_procedure__updated_at"), n=Count("id")
    )
    waiting = RequestedProcedure.objects.filter(status=ExamStatus.ORDERED).aggregate(
        changed=Max("updated_at"), n=Count("id")
    )
    minute = timezone.now().strftime("%Y%m%d%H%M")
    parts = [steps["changed"], steps["exams_changed"], steps["n"], waiting["changed"], waiting["n"], minute]
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:20]
