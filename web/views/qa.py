"""Reconciliation and QA (issue 7 §7): unscheduled exams, exams with missing images, HL7
messages the RIS rejected."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib import messages
from django.db.models import CharField, OuterRef, Q, Subquery, Value
from django.db.models.functions import Cast, Concat
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from hl7 import reprocess as hl7_reprocess
from hl7.models import InboundMessage
from ris import workflow
from ris.models import ExamStatus, RequestedProcedure
from web.access import RECONCILE, requires
from web.forms import AcceptForm
from web.views.common import actor_of, get_exam, safe_next

# A completed exam still short of images this long after the quiet period is listed.
MISSING_IMAGES_GRACE = dt.timedelta(minutes=10)


@requires(RECONCILE)
def qa(request):
    overdue = timezone.now() - dt.timedelta(seconds=settings.RIS_ARRIVAL_QUIET_SECONDS) - MISSING_IMAGES_GRACE
    related = RequestedProcedure.objects.select_related("order__patient")
    return render(
        request,
        "web/qa.html",
        {
            "unscheduled": related.filter(needs_reconciliation=True).order_by("-created_at")[:100],
            "missing_images": related.filter(status=ExamStatus.COMPLETED)
            .filter(Q(status_changed_at__lt=overdue) | ~Q(qa_problem=""))
            .order_by("status_changed_at")[:100],
            "rejected": rejected_messages()[:100],
            "accept_form": AcceptForm(),
        },
    )


def rejected_messages():
    """AE/AR answers still to deal with: not themselves reprocess runs, and not reprocessed to an
    AA since; each with the answer of its latest reprocess, if any."""
    runs = InboundMessage.objects.filter(
        peer__endswith=Concat(Value(hl7_reprocess.PEER_MARK), Cast(OuterRef("pk"), CharField()))
    ).order_by("-pk")
    return (
        InboundMessage.objects.filter(outcome__in=hl7_reprocess.REPROCESSABLE)
        .exclude(peer__contains=hl7_reprocess.PEER_MARK)
        .annotate(last_reprocess=Subquery(runs.values("pk")[:1]), last_outcome=Subquery(runs.values("outcome")[:1]))
        .filter(Q(last_outcome__isnull=True) | ~Q(last_outcome="AA"))
        .defer("raw", "ack")
        .order_by("-received_at")
    )


@require_POST
@requires(RECONCILE)
def accept_exam(request, accession: str):
    """Read the exam as it is: READY_FOR_READING with the reason in the audit trail."""
    exam = get_exam(accession)
    form = AcceptForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Say why the exam can be read as it is."))
    else:
        try:
            workflow.mark_ready_for_reading(actor_of(request), exam, override_reason=form.cleaned_data["reason"])
        except workflow.WorkflowError as error:
            messages.error(request, error.reason)
        else:
            messages.success(request, _("Exam %(accession)s is ready for reading.") % {"accession": accession})
    return redirect(safe_next(request, "web:qa"))


@require_POST
@requires(RECONCILE)
def keep_exam(request, accession: str):
    """An unscheduled exam (MPPS without an order) is kept as its own order."""
    exam = get_exam(accession)
    try:
        workflow.keep_unscheduled_exam(actor_of(request), exam)
    except workflow.WorkflowError as error:
        messages.error(request, error.reason)
    else:
        messages.success(request, _("Exam %(accession)s kept as its own order.") % {"accession": accession})
    return redirect(safe_next(request, "web:qa"))


@require_POST
@requires(RECONCILE)
def reconcile_exam(request, accession: str):
    """An unscheduled exam is matched to the scheduled exam it was meant to be: the MPPS, the
    images and the progress move to that exam (ris.workflow.reconcile_unscheduled_exam)."""
    exam = get_exam(accession)
    target_accession = request.POST.get("target", "").strip()
    target = RequestedProcedure.objects.filter(accession_number=target_accession).first()
    if target is None:
        messages.error(request, _("No exam has the accession number %(accession)s.") % {"accession": target_accession})
        return redirect(safe_next(request, "web:qa"))
    try:
        workflow.reconcile_unscheduled_exam(actor_of(request), exam, target)
    except workflow.WorkflowError as error:
        messages.error(request, error.reason)
    else:
        messages.success(
            request,
            _("Exam %(accession)s matched to %(target)s.") % {"accession": accession, "target": target_accession},
        )
    return redirect(safe_next(request, "web:qa"))
