"""Translatable names of the statuses and priorities the UI shows (values stay English on the wire)."""

from django.utils.translation import gettext_lazy as _

STATUS_LABELS = {
    "ORDERED": _("Ordered"),
    "SCHEDULED": _("Scheduled"),
    "IN_PROGRESS": _("In progress"),
    "COMPLETED": _("Completed"),
    "READY_FOR_READING": _("Ready for reading"),
    "PRELIMINARY": _("Preliminary"),
    "FINAL": _("Final"),
    "AMENDED": _("Amended"),
    "CANCELLED": _("Cancelled"),
    "DISCONTINUED": _("Discontinued"),
    # scheduled step / report / outbox states
    "ARRIVED": _("Arrived"),
    "STARTED": _("Started"),
    "DRAFT": _("Draft"),
    "PENDING": _("Pending"),
    "DELIVERED": _("Delivered"),
    "FAILED": _("Failed"),
    "IN PROGRESS": _("In progress"),
}
PRIORITY_LABELS = {
    "STAT": _("STAT"),
    "HIGH": _("High"),
    "ROUTINE": _("Routine"),
    "MEDIUM": _("Medium"),
    "LOW": _("Low"),
}


def status_label(status: str) -> str:
    return str(STATUS_LABELS.get(status, status))
