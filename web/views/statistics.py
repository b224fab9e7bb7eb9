"""Statistics (issue 7 §10): turnaround times per modality and day, volumes per room.

Order→scan is from the order's creation to the first MPPS start; scan→final from that start
to the first final report. Medians, over a bounded window of days (at most MAX_DAYS).
"""

from __future__ import annotations

import datetime as dt
import statistics as stats
from collections import defaultdict

from django.db.models import Count, Min
from django.shortcuts import render
from django.utils import timezone

from ris.models import ReportStatus, RequestedProcedure, ScheduledStep, StepStatus
from ris.timeutil import local_day_bounds, site_zone
from web.access import VIEW_EXAMS, requires

MAX_DAYS = 62


def _minutes(later: dt.datetime | None, earlier: dt.datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier).total_seconds() / 60, 1)


def turnaround(first_day: dt.date, last_day: dt.date) -> dict:
    start, _ = local_day_bounds(first_day)
    _, end = local_day_bounds(last_day)
    exams = (
        RequestedProcedure.objects.filter(created_at__gte=start, created_at__lt=end)
        .annotate(
            scanned=Min("scheduled_steps__performed_steps__started_at"),
        )
        .select_related("order")
    )
    finals = dict(
        RequestedProcedure.objects.filter(
            created_at__gte=start, created_at__lt=end, reports__status__in=[ReportStatus.FINAL, ReportStatus.AMENDED]
        )
        .values_list("pk")
        .annotate(first=Min("reports__signed_at"))
    )
    order_to_scan: dict[str, list[float]] = defaultdict(list)
    scan_to_final: dict[str, list[float]] = defaultdict(list)
    per_day: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    per_day_modality: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for exam in exams:
        day = exam.created_at.astimezone(site_zone()).date().isoformat()
        a = _minutes(exam.scanned, exam.order.created_at)
        b = _minutes(finals.get(exam.pk), exam.scanned)
        for metric, value, per_modality in (("order_to_scan", a, order_to_scan), ("scan_to_final", b, scan_to_final)):
            if value is not None:
                per_modality[exam.modality].append(value)
                per_day[day][metric].append(value)
                per_day_modality[(day, exam.modality)][metric].append(value)
    modalities = sorted(set(order_to_scan) | set(scan_to_final) | set(exams.values_list("modality", flat=True)))
    rows = [
        {
            "modality": m,
            "count": exams.filter(modality=m).count(),
            "order_to_scan": _median(order_to_scan[m]),
            "scan_to_final": _median(scan_to_final[m]),
        }
        for m in modalities
    ]
    days = [first_day + dt.timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    series = {
        "labels": [d.isoformat() for d in days],
        "order_to_scan": [_median(per_day[d.isoformat()]["order_to_scan"]) for d in days],
        "scan_to_final": [_median(per_day[d.isoformat()]["scan_to_final"]) for d in days],
    }
    by_day = [
        {
            "day": d,
            "cells": [
                {
                    "order_to_scan": _median(per_day_modality[(d.isoformat(), m)]["order_to_scan"]),
                    "scan_to_final": _median(per_day_modality[(d.isoformat(), m)]["scan_to_final"]),
                }
                for m in modalities
            ],
        }
        for d in reversed(days)
        if any((d.isoformat(), m) in per_day_modality for m in modalities)
    ]
    return {"rows": rows, "series": series, "modalities": modalities, "by_day": by_day}


def _median(values: list[float]) -> float | None:
    return round(stats.median(values), 1) if values else None


def room_volumes(first_day: dt.date, last_day: dt.date) -> dict:
    """Exams per room and day (steps that were not cancelled)."""
    start, _ = local_day_bounds(first_day)
    _, end = local_day_bounds(last_day)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    steps = ScheduledStep.objects.filter(start__gte=start, start__lt=end).exclude(status=StepStatus.CANCELLED)
    for step in steps.only("start", "station_ae_title"):
        day = step.start.astimezone(site_zone()).date().isoformat()
        room = step.station_ae_title or "—"
        counts[room][day] = counts[room].get(day, 0) + 1
    days = [(first_day + dt.timedelta(days=i)).isoformat() for i in range((last_day - first_day).days + 1)]
    return {
        "labels": days,
        "rooms": [
            {"room": r, "counts": [counts[r].get(d, 0) for d in days], "total": sum(counts[r].values())}
            for r in sorted(counts)
        ],
        "by_status": list(steps.values("status").annotate(n=Count("id")).order_by("status")),
    }


@requires(VIEW_EXAMS)
def statistics(request):
    today = timezone.now().astimezone(site_zone()).date()
    try:
        days = max(1, min(int(request.GET.get("days", 14)), MAX_DAYS))
    except ValueError:
        days = 14
    first = today - dt.timedelta(days=days - 1)
    return render(
        request,
        "web/statistics.html",
        {
            "days": days,
            "first": first,
            "last": today,
            "turnaround": turnaround(first, today),
            "volumes": room_volumes(first, today),
        },
    )
