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


SEX_LABELS = {"F": _("female"), "M": _("male"), "O": _("other"), "": ""}

# Audit actions (ris.workflow) as the exam timeline shows them.
ACTION_LABELS = {
    "order.placed": _("Order placed"),
    "exam.ordered": _("Exam ordered"),
    "exam.scheduled": _("Exam scheduled"),
    "exam.patient_arrived": _("Patient arrived"),
    "exam.started": _("Exam started"),
    "exam.completed": _("Exam completed"),
    "exam.discontinued": _("Exam discontinued"),
    "exam.cancelled": _("Exam cancelled"),
    "exam.ready_for_reading": _("Ready for reading"),
    "report.signed": _("Report signed"),
    "patient.registered": _("Patient registered"),
    "patient.updated": _("Patient updated"),
    "patient.merged": _("Patients merged"),
}


def action_label(action: str) -> str:
    return str(ACTION_LABELS.get(action, action))
