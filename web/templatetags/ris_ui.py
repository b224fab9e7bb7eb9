"""Template helpers: status badges, person names, durations."""

from __future__ import annotations

import datetime as dt

from django import template
from django.utils.html import format_html
from django.utils.translation import gettext as _

from web.labels import PRIORITY_LABELS, SEX_LABELS, status_label

register = template.Library()

# Colour class of each exam status on the board (see web/static/web/ris.css).
STATUS_CLASS = {
    "ORDERED": "st-ordered",
    "SCHEDULED": "st-scheduled",
    "IN_PROGRESS": "st-progress",
    "COMPLETED": "st-completed",
    "READY_FOR_READING": "st-ready",
    "PRELIMINARY": "st-prelim",
    "FINAL": "st-final",
    "AMENDED": "st-final",
    "CANCELLED": "st-cancelled",
    "DISCONTINUED": "st-problem",
}


@register.simple_tag
def status_badge(status: str, problem: str = "") -> str:
    """A coloured status badge (plus a problem badge); built in Python, as the board draws hundreds."""
    badge = format_html(
        '<span class="badge {}" data-status="{}">{}</span>', STATUS_CLASS.get(status, ""), status, status_label(status)
    )
    if problem:
        badge += format_html(' <span class="badge st-problem" title="{}">⚠ {}</span>', problem, problem)
    return badge


@register.filter
def person_name(dicom_pn: str) -> str:
    """DICOM PN "Family^Given^Middle^Prefix^Suffix" as a person reads it: "Prefix Family Middle Given"."""
    if not dicom_pn:
        return ""
    parts = (dicom_pn.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    return " ".join(p for p in (prefix, family, middle, given, suffix) if p)


@register.filter
def age_since(moment: dt.datetime | None) -> str:
    """ "3 h 12 min" since a moment (waiting time on work lists)."""
    if moment is None:
        return ""
    from django.utils import timezone

    minutes = max(0, int((timezone.now() - moment).total_seconds() // 60))
    if minutes < 60:
        return _("%(m)d min") % {"m": minutes}
    if minutes < 48 * 60:
        return _("%(h)d h %(m)d min") % {"h": minutes // 60, "m": minutes % 60}
    return _("%(d)d days") % {"d": minutes // 1440}


@register.filter
def get_item(mapping: dict, key):
    return mapping.get(key) if mapping else None


@register.filter
def priority_label(priority: str) -> str:
    return str(PRIORITY_LABELS.get(priority, priority))


@register.filter
def sex_label(sex: str) -> str:
    return str(SEX_LABELS.get(sex, ""))


@register.filter
def status_text(status: str) -> str:
    return status_label(status)
