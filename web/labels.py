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
    "exam.changed": _("Exam changed"),
    "exam.unscheduled": _("Unscheduled exam"),
    "exam.images_missing": _("Images missing"),
    "exam.reconciled": _("Exam reconciled"),
    "exam.reconciled_into": _("Reconciled into another exam"),
    "exam.reconciled_kept": _("Kept as its own order"),
    "study.arrived": _("Study arrived"),
    "study.matched": _("Study matched"),
    "study.unmatched": _("Study unmatched"),
    "mpps.unmatched_reference": _("MPPS names an unknown step"),
    "order.placer_status": _("Placer status"),
    "outbox.retried": _("Delivery retried"),
}

# Keys of an audit event's details (ris.workflow.audit) as the exam timeline shows them.
DETAIL_LABELS = {
    "old_status": _("from"),
    "new_status": _("to"),
    "reason": _("reason"),
    "override_reason": _("reason"),
    "steps": _("steps"),
    "start": _("start"),
    "station_ae_title": _("station"),
    "placer": _("placer number"),
    "filler": _("filler number"),
    "changed": _("changed"),
    "expected": _("expected"),
    "expected_instances": _("expected images"),
    "arrived": _("arrived"),
    "arrived_before_order": _("arrived before the order"),
    "missing": _("missing"),
    "count": _("count"),
    "destination": _("destination"),
    "message_control_id": _("message"),
    "control_id": _("message"),
    "last_error": _("last error"),
    "placer_status": _("placer status"),
    "report_status": _("report status"),
    "report_version": _("report version"),
    "mpps": _("MPPS"),
    "studies": _("studies"),
    "study": _("study"),
    "target": _("target"),
    "unscheduled": _("unscheduled exam"),
    "references": _("references"),
    "extra": _("extra"),
    "survivor": _("surviving patient"),
    "merged": _("merged patient"),
    "orders": _("orders"),
    # fields named in "changed" (ris.workflow.change_exam, register_patient)
    "modality": _("modality"),
    "station_name": _("station name"),
    "location": _("location"),
    "procedure_code": _("procedure code"),
    "procedure_code_scheme": _("code scheme"),
    "procedure_description": _("procedure"),
    "protocol_codes": _("protocol"),
    "priority": _("priority"),
    "ordering_physician": _("ordering physician"),
    "referring_physician": _("referring physician"),
    "admission_id": _("visit number"),
    "patient_location": _("patient location"),
    "allergies": _("allergies"),
    "medical_alerts": _("medical alerts"),
}


def detail_label(key: str) -> str:
    """The label of a detail key; "step.start" reads as the step's "start"."""
    return str(DETAIL_LABELS.get(key.removeprefix("step."), key))


def action_label(action: str) -> str:
    return str(ACTION_LABELS.get(action, action))
