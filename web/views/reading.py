"""Reading list and report editor (issue 7 §8): exams to read by priority and age; findings and
impression; draft, preliminary, final, addendum; prior reports; delivery status per report."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Case, IntegerField, Value, When
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from ris import workflow
from ris.models import ExamStatus, Priority, ReportStatus, RequestedProcedure
from web.access import SIGN, requires
from web.forms import ReportForm
from web.views.common import actor_of, add_workflow_error, get_exam

PRIORITY_ORDER = [Priority.STAT, Priority.HIGH, Priority.MEDIUM, Priority.ROUTINE, Priority.LOW]


def reading_queue():
    """READY_FOR_READING and PRELIMINARY exams: STAT first, then the longest waiting."""
    rank = Case(
        *[When(order__priority=p, then=Value(i)) for i, p in enumerate(PRIORITY_ORDER)],
        default=Value(len(PRIORITY_ORDER)),
        output_field=IntegerField(),
    )
    return (
        RequestedProcedure.objects.filter(status__in=[ExamStatus.READY_FOR_READING, ExamStatus.PRELIMINARY])
        .select_related("order__patient")
        .annotate(rank=rank)
        .order_by("rank", "status_changed_at")
    )


@requires(SIGN)
def reading_list(request):
    template = "web/_reading_rows.html" if request.headers.get("HX-Request") else "web/reading_list.html"
    return render(request, template, {"exams": reading_queue()[:200]})


ACTIONS = {"draft", "preliminary", "final", "addendum", "correction"}


@requires(SIGN)
def report_editor(request, accession: str):
    exam = get_exam(accession)
    latest = exam.reports.order_by("-version").first()
    signed = exam.status in workflow.SIGNED_STATUSES
    if request.method == "POST" and request.POST.get("action") in ACTIONS:
        form = ReportForm(request.POST)
        if form.is_valid():
            action = request.POST["action"]
            data = form.cleaned_data
            try:
                if action == "draft":
                    workflow.save_report_draft(actor_of(request), exam, **data)
                elif action in ("addendum", "correction"):
                    workflow.sign_report(actor_of(request), exam, final=True, amendment=action, **data)
                else:
                    workflow.sign_report(actor_of(request), exam, final=action == "final", **data)
            except workflow.WorkflowError as error:
                add_workflow_error(form, error)
            else:
                done = {
                    "draft": _("Draft saved."),
                    "preliminary": _("Preliminary report signed."),
                    "final": _("Final report signed."),
                    "addendum": _("Addendum signed."),
                    "correction": _("Corrected report signed."),
                }[action]
                messages.success(request, done)
                return redirect("web:report_editor", accession=accession)
    else:
        # Continue a draft or preliminary; after a final, an addendum starts empty (its text is
        # added below the signed one) and a correction (?correct=1) starts from the signed text.
        correcting = signed and request.GET.get("correct") == "1"
        initial = {}
        if latest and (not signed or correcting or latest.status == ReportStatus.DRAFT):
            initial = {"findings": latest.findings, "impression": latest.impression}
        form = ReportForm(initial=initial)
    priors = (
        RequestedProcedure.objects.filter(order__patient=exam.order.patient)
        .exclude(pk=exam.pk)
        .filter(reports__signed_at__isnull=False)
        .distinct()
        .order_by("-created_at")
        .prefetch_related("reports")[:10]
    )
    return render(
        request,
        "web/report_editor.html",
        {
            "exam": exam,
            "patient": exam.order.patient,
            "form": form,
            "signed": signed,
            "correcting": signed and request.GET.get("correct") == "1",
            "signed_report": exam.reports.exclude(signed_at=None).order_by("-version").first() if signed else None,
            "reportable": exam.status in workflow.REPORTABLE_STATUSES | workflow.SIGNED_STATUSES,
            "versions": exam.reports.order_by("-version").prefetch_related("outbound_messages"),
            "priors": priors,
        },
    )
