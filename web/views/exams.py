"""Exams and patients (issue 7 §5): searchable lists, the exam page with its timeline, the
patient page with merged identifiers and history, and the IID-style deep link."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from hl7.models import InboundMessage
from ris import workflow
from ris.models import (
    ExamStatus,
    ExpectedInstance,
    Instance,
    Patient,
    PerformedStep,
    RequestedProcedure,
    fold_for_search,
)
from ris.timeutil import local_day_bounds
from web.access import PERFORM, RECONCILE, SCHEDULE, SIGN, VIEW_EXAMS, VIEW_PATIENTS, requires
from web.labels import DETAIL_LABELS, STATUS_LABELS, action_label, detail_label, status_label
from web.views.common import actor_of, get_exam

PAGE_SIZE = 25
HL7_SCAN_LIMIT = 300


def filter_exams(params) -> Any:
    exams = RequestedProcedure.objects.select_related("order__patient").order_by("-created_at")
    q = params.get("q", "").strip()
    if q:
        by_name = Q()
        for word in fold_for_search(q).split():
            by_name &= Q(order__patient__name_search__contains=word)
        exams = exams.filter(
            Q(accession_number__istartswith=q) | Q(order__patient__patient_id__istartswith=q) | by_name
        )
    if params.get("modality"):
        exams = exams.filter(modality=params["modality"])
    if params.get("status"):
        exams = exams.filter(status=params["status"])
    for bound, lookup in (("date_from", "gte"), ("date_to", "lt")):
        try:
            day = dt.date.fromisoformat(params.get(bound, ""))
        except ValueError:
            continue
        start, end = local_day_bounds(day)
        moment = start if lookup == "gte" else end
        exams = exams.filter(
            Q(**{f"scheduled_steps__start__{lookup}": moment})
            | Q(scheduled_steps__start=None, **{f"created_at__{lookup}": moment})
        )
    return exams.distinct()


@requires(VIEW_EXAMS)
def exam_list(request):
    page = Paginator(filter_exams(request.GET), PAGE_SIZE).get_page(request.GET.get("page"))
    params = request.GET.copy()
    params.pop("page", None)
    return render(
        request,
        "web/exam_list.html",
        {
            "page": page,
            "params": params.urlencode(),
            "statuses": [(s, STATUS_LABELS[s]) for s in ExamStatus.values],
            "modalities": sorted(
                set(RequestedProcedure.objects.exclude(modality="").values_list("modality", flat=True))
            ),
            "filters": request.GET,
        },
    )


@dataclass
class TimelineEntry:
    at: dt.datetime
    kind: str
    title: str
    actor: str = ""
    detail: Any = None
    raw: str = ""
    code: str = ""


def _inbound_hl7(exam: RequestedProcedure) -> list[InboundMessage]:
    """HL7 messages from the order's sender that mention its placer number or accession."""
    order = exam.order
    keys = [k.encode() for k in (order.placer_order_number, exam.accession_number) if k]
    if not order.source_application or not keys:
        return []
    candidates = InboundMessage.objects.filter(
        sending_application=order.source_application,
        received_at__gte=order.created_at - dt.timedelta(minutes=5),
    ).order_by("received_at")[:HL7_SCAN_LIMIT]
    return [m for m in candidates if any(k in bytes(m.raw) for k in keys)]


def _detail_text(detail: dict) -> str:
    """An audit event's details as "key: value" pairs, statuses in words, keys in the order of
    DETAIL_LABELS (PostgreSQL's jsonb does not keep the order they were written in)."""
    parts = []
    for key, value in sorted((detail or {}).items(), key=_detail_order):
        if value in ("", None, [], {}):
            continue
        if key in ("old_status", "new_status"):
            value = status_label(value)
        elif key == "changed" and isinstance(value, list):
            value = ", ".join(detail_label(str(v)) for v in value)
        elif isinstance(value, bool):
            value = _("yes") if value else _("no")
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        parts.append(f"{detail_label(key)}: {value}")
    return " · ".join(parts)


_DETAIL_RANK = {key: rank for rank, key in enumerate(DETAIL_LABELS)}


def _detail_order(item: tuple[str, object]) -> tuple[int, str]:
    return _DETAIL_RANK.get(item[0], len(_DETAIL_RANK)), item[0]


def timeline(exam: RequestedProcedure) -> list[TimelineEntry]:
    """Everything that happened to the exam, oldest first."""
    entries = [
        TimelineEntry(e.at, "audit", action_label(e.action), e.actor, _detail_text(e.detail), code=e.action)
        for e in exam.audit_events.select_related("user").order_by("at", "id")
    ]
    for message in _inbound_hl7(exam):
        entries.append(
            TimelineEntry(
                message.received_at,
                "hl7-in",
                f"HL7 {message.message_type} {message.control_id} → {message.outcome or '…'}",
                message.sending_application,
                message.error,
                bytes(message.raw).decode("utf-8", "replace").replace("\r", "\n"),
            )
        )
    for performed in PerformedStep.objects.filter(scheduled_steps__requested_procedure=exam).distinct():
        station = performed.performed_station_ae_title
        started = performed.started_at or performed.created_at
        entries.append(
            TimelineEntry(
                started,
                "mpps",
                f"MPPS {status_label('IN PROGRESS')}",
                station,
                performed.sop_instance_uid,
                code="MPPS IN PROGRESS",
            )
        )
        if performed.ended_at and performed.status != "IN PROGRESS":
            title = f"MPPS {status_label(performed.status)}"
            reason = performed.discontinuation_reason
            entries.append(
                TimelineEntry(performed.ended_at, "mpps", title, station, reason, code=f"MPPS {performed.status}")
            )
    for study in exam.studies.all():
        for series in study.series.all():
            arrived = series.instances.order_by("received_at")
            first = arrived.first()
            if first is not None:
                entries.append(
                    TimelineEntry(
                        first.received_at,
                        "images",
                        _("%(n)d instance(s) of series %(series)s arrived")
                        % {"n": arrived.count(), "series": series.series_number or series.series_instance_uid},
                        first.source_ae_title,
                        first.get_source_display(),
                    )
                )
    for report in exam.reports.exclude(signed_at=None):
        entries.append(
            TimelineEntry(
                report.signed_at,
                "report",
                f"{_('Report')} v{report.version} {report.status}",
                report.author.get_username(),
            )
        )
    for message in exam.outbound_messages.all():
        entries.append(
            TimelineEntry(
                message.delivered_at or message.created_at,
                "hl7-out",
                f"{message.destination.upper()} {message.message_control_id} {status_label(message.status)}",
                "",
                message.last_error,
                message.payload,
            )
        )
    return sorted(entries, key=lambda e: e.at)


def image_counts(exam: RequestedProcedure) -> dict[str, int]:
    expected = (
        ExpectedInstance.objects.filter(performed_step__scheduled_steps__requested_procedure=exam)
        .values("sop_instance_uid")
        .distinct()
        .count()
    )
    received = Instance.objects.filter(series__study__requested_procedure=exam).count()
    return {"expected": expected, "received": received}


def _actions(user, exam: RequestedProcedure) -> dict[str, bool]:
    transitions = workflow.EXAM_TRANSITIONS[exam.status]
    return {
        "schedule": user.has_perm(SCHEDULE) and ExamStatus.SCHEDULED in transitions,
        "cancel": user.has_perm(SCHEDULE) and ExamStatus.CANCELLED in transitions,
        "discontinue": user.has_perm(SCHEDULE) and ExamStatus.DISCONTINUED in transitions,
        "arrived": user.has_perm(PERFORM) and exam.status == ExamStatus.SCHEDULED,
        "accept": user.has_perm(RECONCILE) and exam.status == ExamStatus.COMPLETED,
        "report": user.has_perm(SIGN) and exam.status in workflow.REPORTABLE_STATUSES | workflow.SIGNED_STATUSES,
    }


@requires(VIEW_EXAMS)
def exam_detail(request, accession: str):
    exam = get_exam(accession)
    context = {
        "exam": exam,
        "patient": exam.order.patient,
        "order": exam.order,
        "steps": exam.scheduled_steps.order_by("id"),
        "performed": PerformedStep.objects.filter(scheduled_steps__requested_procedure=exam).distinct(),
        "images": image_counts(exam),
        "reports": exam.reports.order_by("-version"),
        "outbound": exam.outbound_messages.order_by("-id"),
        "actions": _actions(request.user, exam),
    }
    if request.headers.get("HX-Request"):
        return render(request, "web/_exam_status.html", context)
    context["timeline"] = timeline(exam)
    return render(request, "web/exam_detail.html", context)


@requires(VIEW_EXAMS)
def iid(request):
    """IHE IID-style link: ?accessionNumber=, ?studyUID= or ?patientID= opens the exam (or patient)."""
    if request.GET.get("accessionNumber"):
        exam = get_object_or_404(RequestedProcedure, accession_number=request.GET["accessionNumber"])
        return redirect("web:exam_detail", accession=exam.accession_number)
    if request.GET.get("studyUID"):
        exam = get_object_or_404(RequestedProcedure, study_instance_uid=request.GET["studyUID"])
        return redirect("web:exam_detail", accession=exam.accession_number)
    if request.GET.get("patientID"):
        patient = Patient.objects.filter(patient_id=request.GET["patientID"]).first()
        if patient is None:
            raise Http404
        return redirect("web:patient_detail", pk=(patient.merged_into_id or patient.pk))
    raise Http404


@requires(VIEW_PATIENTS)
def patient_list(request):
    q = request.GET.get("q", "").strip()
    patients = Patient.objects.filter(merged_into=None).order_by("family_name", "given_name")
    if q:
        by_name = Q()
        for word in fold_for_search(q).split():
            by_name &= Q(name_search__contains=word)
        patients = patients.filter(Q(patient_id__istartswith=q) | Q(identifiers__value__istartswith=q) | by_name)
    page = Paginator(patients.distinct(), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "web/patient_list.html", {"page": page, "q": q})


@requires(VIEW_PATIENTS)
def patient_detail(request, pk: int):
    patient = get_object_or_404(Patient, pk=pk)
    exams = RequestedProcedure.objects.filter(order__patient=patient).select_related("order").order_by("-created_at")
    return render(
        request,
        "web/patient_detail.html",
        {
            "patient": patient,
            "exams": exams,
            "identifiers": patient.identifiers.all(),
            "merged": patient.merged_patients.all(),
            "audit": patient.audit_events.order_by("-at")[:50],
        },
    )


@require_POST
@requires(RECONCILE, VIEW_PATIENTS)
def merge_patient(request, pk: int):
    """Merge a duplicate record (by its patient ID) into this one, as an ADT^A40 would."""
    survivor = get_object_or_404(Patient, pk=pk, merged_into=None)
    wanted = request.POST.get("patient_id", "").strip()
    candidates = Patient.objects.filter(patient_id=wanted, merged_into=None).exclude(pk=survivor.pk)
    if request.POST.get("issuer", "").strip():
        candidates = candidates.filter(issuer=request.POST["issuer"].strip())
    duplicates = list(candidates[:2])
    if len(duplicates) != 1:
        messages.error(
            request,
            _("No other patient with ID %(id)s.") % {"id": wanted}
            if not duplicates
            else _("Several patients have ID %(id)s: give the issuer too.") % {"id": wanted},
        )
        return redirect("web:patient_detail", pk=survivor.pk)
    try:
        workflow.merge_patients(actor_of(request), survivor, duplicates[0])
    except workflow.WorkflowError as error:
        messages.error(request, error.reason)
    else:
        messages.success(
            request,
            _("Patient %(merged)s merged into %(survivor)s.")
            % {"merged": duplicates[0].patient_id, "survivor": survivor.patient_id},
        )
    return redirect("web:patient_detail", pk=survivor.pk)
