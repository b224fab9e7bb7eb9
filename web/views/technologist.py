"""Technologist view (issue 7 §6): today's worklist of a room, patient arrival, MPPS progress,
images expected vs received."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, Q
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from ris import workflow
from ris.models import ExpectedInstance, Instance, ScheduledStep, StepStatus
from ris.timeutil import local_day_bounds
from web import scheduling
from web.access import PERFORM, requires
from web.views.common import actor_of, get_exam, parse_day, safe_next


def room_worklist(ae_title: str, day) -> list[dict]:
    start, end = local_day_bounds(day)
    steps = list(
        ScheduledStep.objects.filter(start__gte=start, start__lt=end)
        .filter(Q(station_ae_title=ae_title) if ae_title else Q())
        .exclude(status=StepStatus.CANCELLED)
        .select_related("requested_procedure__order__patient")
        .annotate(mpps=Count("performed_steps"))
        .order_by("start", "id")
    )
    exam_ids = {s.requested_procedure_id for s in steps}
    expected = dict(
        ExpectedInstance.objects.filter(performed_step__scheduled_steps__requested_procedure__in=exam_ids)
        .values_list("performed_step__scheduled_steps__requested_procedure")
        .annotate(n=Count("sop_instance_uid", distinct=True))
    )
    received = dict(
        Instance.objects.filter(series__study__requested_procedure__in=exam_ids)
        .values_list("series__study__requested_procedure")
        .annotate(n=Count("id"))
    )
    return [
        {
            "step": s,
            "exam": s.requested_procedure,
            "expected": expected.get(s.requested_procedure_id, 0),
            "received": received.get(s.requested_procedure_id, 0),
        }
        for s in steps
    ]


@requires(PERFORM)
def technologist(request):
    rooms = scheduling.rooms_for()
    room = request.GET.get("room") or request.session.get("tech_room") or (rooms[0].ae_title if rooms else "")
    request.session["tech_room"] = room
    day = parse_day(request.GET.get("day"))
    context = {"rooms": rooms, "room": room, "day": day, "rows": room_worklist(room, day)}
    template = "web/_tech_rows.html" if request.headers.get("HX-Request") else "web/technologist.html"
    return render(request, template, context)


@require_POST
@requires(PERFORM)
def patient_arrived(request, accession: str):
    exam = get_exam(accession)
    try:
        workflow.record_patient_arrived(actor_of(request), exam)
    except workflow.WorkflowError as error:
        messages.error(request, error.reason)
    else:
        messages.success(request, _("Patient of exam %(accession)s has arrived.") % {"accession": accession})
    return redirect(safe_next(request, "web:technologist"))
