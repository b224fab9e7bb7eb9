"""Interfaces page (issue 7 §9, admins): component health, HL7 inbound journal with raw view,
the outbox with retry of failed rows, and DICOM activity per registered modality."""

from __future__ import annotations

import importlib
import json

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Max, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from hl7 import reprocess as hl7_reprocess
from hl7.models import InboundMessage
from ris import health, workflow
from ris.models import Instance, OutboundMessage, OutboxStatus, PerformedStep
from web.access import ADMINISTER, requires
from web.views.common import actor_of, safe_next
from worklist.models import AssociationLog, AssociationOutcome, Modality

PAGE_SIZE = 50


def _retry_function():
    """ris.outbox.retry_failed, once the outbox module (issue 6) provides it."""
    try:
        return getattr(importlib.import_module("ris.outbox"), "retry_failed", None)
    except ImportError:
        return None


def component_health(request) -> dict:
    return json.loads(health.healthz(request).content)


def dicom_activity() -> list[dict]:
    """Per registered modality: its last MPPS and last instance received."""
    mpps = dict(PerformedStep.objects.values_list("performed_station_ae_title").annotate(last=Max("created_at")))
    stores = {
        row["source_ae_title"]: row
        for row in Instance.objects.values("source_ae_title").annotate(last=Max("received_at"), n=Count("id"))
    }
    return [
        {
            "modality": m,
            "last_mpps": mpps.get(m.ae_title),
            "last_instance": stores.get(m.ae_title, {}).get("last"),
            "instances": stores.get(m.ae_title, {}).get("n", 0),
        }
        for m in Modality.objects.all()
    ]


@requires(ADMINISTER)
def interfaces(request):
    journal = InboundMessage.objects.order_by("-received_at")
    q = request.GET.get("q", "").strip()
    if q:
        journal = journal.filter(
            Q(control_id__icontains=q)
            | Q(message_type__icontains=q)
            | Q(sending_application__icontains=q)
            | Q(peer__icontains=q)
            | Q(error__icontains=q)
        )
    if request.GET.get("outcome"):
        journal = journal.filter(outcome=request.GET["outcome"])
    page = Paginator(journal.defer("raw", "ack"), PAGE_SIZE).get_page(request.GET.get("page"))
    params = request.GET.copy()
    params.pop("page", None)
    outbox = (
        OutboundMessage.objects.exclude(status=OutboxStatus.DELIVERED)
        .select_related("requested_procedure")
        .order_by("-id")[:100]
    )
    return render(
        request,
        "web/interfaces.html",
        {
            "health": component_health(request),
            "page": page,
            "params": params.urlencode(),
            "q": q,
            "outcome": request.GET.get("outcome", ""),
            "outbox": outbox,
            "outbox_counts": dict(OutboundMessage.objects.values_list("status").annotate(n=Count("id"))),
            "can_retry": _retry_function() is not None,
            "dicom": dicom_activity(),
            "associations": AssociationLog.objects.order_by("-started_at", "-id")[:10],
        },
    )


@requires(ADMINISTER)
def dicom_associations(request):
    """The DICOM association log (worklist/associations.py), newest first, by AE title and outcome."""
    rows = AssociationLog.objects.order_by("-started_at", "-id")
    ae = request.GET.get("ae", "").strip()
    if ae:
        rows = rows.filter(Q(calling_ae_title__icontains=ae) | Q(called_ae_title__icontains=ae))
    outcome = request.GET.get("outcome", "")
    if outcome in AssociationOutcome.values:
        rows = rows.filter(outcome=outcome)
    params = request.GET.copy()
    params.pop("page", None)
    return render(
        request,
        "web/dicom_associations.html",
        {
            "page": Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page")),
            "params": params.urlencode(),
            "ae": ae,
            "outcome": outcome,
            "outcomes": AssociationOutcome.values,
        },
    )


@requires(ADMINISTER)
def hl7_message(request, pk: int):
    message = get_object_or_404(InboundMessage, pk=pk)
    return render(
        request,
        "web/hl7_message.html",
        {
            "message": message,
            "reprocess_of": hl7_reprocess.reprocess_of(message),
            "reprocesses": InboundMessage.objects.filter(peer=hl7_reprocess.link_peer(message)).order_by("pk"),
            "can_reprocess": message.outcome in hl7_reprocess.REPROCESSABLE,
            "raw": bytes(message.raw).decode("utf-8", "replace").replace("\r", "\n"),
            "ack": bytes(message.ack or b"").decode("utf-8", "replace").replace("\r", "\n"),
        },
    )


@require_POST
@requires(ADMINISTER)
def hl7_reprocess_message(request, pk: int):
    """Run a rejected message again as a new journal entry (hl7.reprocess); show that entry."""
    original = get_object_or_404(InboundMessage, pk=pk)
    try:
        done = hl7_reprocess.reprocess(actor_of(request), original)
    except workflow.WorkflowError as error:
        messages.error(request, error.reason)
        return redirect(safe_next(request, "web:interfaces"))
    text = _("Message #%(old)d reprocessed as #%(new)d (MSH-10 %(control_id)s): answer %(outcome)s.") % {
        "old": original.pk,
        "new": done.entry.pk,
        "control_id": done.control_id or "?",
        "outcome": done.entry.outcome or "—",
    }
    (messages.success if done.entry.outcome == "AA" else messages.warning)(request, text)
    return redirect("web:hl7_message", done.entry.pk)


@require_POST
@requires(ADMINISTER)
def outbox_retry(request):
    retry = _retry_function()
    if retry is None:
        messages.error(request, _("Retry is not available in this version."))
        return redirect("web:interfaces")
    rows = OutboundMessage.objects.filter(pk__in=request.POST.getlist("message"), status=OutboxStatus.FAILED)
    count = retry(list(rows), actor=actor_of(request))
    messages.success(request, _("%(n)d message(s) queued for delivery again.") % {"n": count})
    return redirect("web:interfaces")
