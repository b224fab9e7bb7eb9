"""The exam life cycle: the one place where exam, step, MPPS and report states change.

HL7, DICOM and the web UI are adapters: they turn their wire format into calls on the
functions here and turn the results (or a WorkflowError) back into their own answers.
Every function runs in one transaction, locks the exam rows it changes, checks each status
change against the tables below, and writes an AuditEvent naming the actor. Work that
must leave the process (worklist refresh, outbound messages) is queued with
transaction.on_commit, so nothing is announced that was not committed.

Life cycle (contract.md): ORDERED → SCHEDULED → IN_PROGRESS → COMPLETED →
READY_FOR_READING → PRELIMINARY → FINAL → AMENDED, with CANCELLED and DISCONTINUED.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Exists, Max, OuterRef, Q
from django.db.models.signals import post_save
from django.dispatch import Signal
from django.utils import timezone

from ris.compiled import CompiledQuery
from ris.models import (
    ActorKind,
    AuditEvent,
    ExamStatus,
    ExpectedInstance,
    ImagingOrder,
    Instance,
    OutboundMessage,
    Patient,
    PatientIdentifier,
    PerformedStatus,
    PerformedStep,
    Priority,
    Report,
    ReportStatus,
    RequestedProcedure,
    ScheduledStep,
    Series,
    StationRule,
    StepStatus,
    Study,
)

E, S, P = ExamStatus, StepStatus, PerformedStatus
P_, R_ = ParamSpec("P_"), TypeVar("R_")

# --- Transition tables ---------------------------------------------------------------

EXAM_TRANSITIONS: dict[str, frozenset[str]] = {
    E.ORDERED: frozenset({E.SCHEDULED, E.IN_PROGRESS, E.CANCELLED, E.DISCONTINUED}),
    E.SCHEDULED: frozenset({E.ORDERED, E.SCHEDULED, E.IN_PROGRESS, E.CANCELLED, E.DISCONTINUED}),
    E.IN_PROGRESS: frozenset({E.COMPLETED, E.DISCONTINUED}),
    # Back to IN_PROGRESS: a further MPPS for the same exam (the "append" case).
    E.COMPLETED: frozenset({E.READY_FOR_READING, E.IN_PROGRESS}),
    E.READY_FOR_READING: frozenset({E.PRELIMINARY, E.FINAL, E.IN_PROGRESS}),
    E.PRELIMINARY: frozenset({E.PRELIMINARY, E.FINAL}),
    E.FINAL: frozenset({E.AMENDED}),
    E.AMENDED: frozenset({E.AMENDED}),
    # A discontinued exam may be rescheduled (a new worklist item) or given up.
    E.DISCONTINUED: frozenset({E.SCHEDULED, E.CANCELLED}),
    E.CANCELLED: frozenset(),
}

STEP_TRANSITIONS: dict[str, frozenset[str]] = {
    S.SCHEDULED: frozenset({S.SCHEDULED, S.ARRIVED, S.STARTED, S.CANCELLED, S.DISCONTINUED}),
    S.ARRIVED: frozenset({S.SCHEDULED, S.STARTED, S.CANCELLED, S.DISCONTINUED}),
    S.STARTED: frozenset({S.COMPLETED, S.DISCONTINUED}),
    S.COMPLETED: frozenset({S.STARTED}),
    S.DISCONTINUED: frozenset(),
    S.CANCELLED: frozenset(),
}

PERFORMED_TRANSITIONS: dict[str, frozenset[str]] = {
    P.IN_PROGRESS: frozenset({P.COMPLETED, P.DISCONTINUED}),
    P.COMPLETED: frozenset(),
    P.DISCONTINUED: frozenset(),
}

OPEN_STEP_STATUSES = frozenset({S.SCHEDULED, S.ARRIVED})
FINAL_STEP_STATUSES = frozenset({S.COMPLETED, S.DISCONTINUED, S.CANCELLED})
REPORTABLE_STATUSES = frozenset({E.READY_FOR_READING, E.PRELIMINARY})
SIGNED_STATUSES = frozenset({E.FINAL, E.AMENDED})

# Sent inside the transaction whenever scheduled steps change (new, moved, status, patient
# data), so the worklist can prepare their answers before the change commits.
scheduled_steps_changed = Signal()  # kwargs: steps (list[ScheduledStep])
# Sent inside the transaction when a COMPLETED exam has new images to weigh (a reconciled exam
# took its studies over), so worklist asks for its completeness check (one pending per exam).
completeness_check_needed = Signal()  # kwargs: exam_ids (list[int])
# Sent on commit after a report version was signed and its outbox rows written.
report_signed = Signal()  # kwargs: report (Report), outbound (list[OutboundMessage])


class WorkflowError(Exception):
    """A request the workflow refuses, with a reason fit to show the sender.

    `code` is stable for adapters to map: "illegal_transition", "in_progress", "not_found",
    "duplicate", "invalid", "permission_denied". `field` names the input at fault, if any.
    """

    def __init__(self, code: str, reason: str, field: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class Actor:
    """Who causes a change: a user, a DICOM AE, an HL7 sender or the system itself."""

    kind: str
    name: str
    user: Any = None
    address: str = ""

    @classmethod
    def for_user(cls, user, address: str = "") -> Actor:
        return cls(ActorKind.USER, user.get_username(), user, address)

    @classmethod
    def for_ae(cls, ae_title: str, address: str = "") -> Actor:
        return cls(ActorKind.AE, ae_title, None, address)

    @classmethod
    def for_hl7(cls, application: str, facility: str = "", address: str = "") -> Actor:
        return cls(ActorKind.HL7, f"{application}^{facility}" if facility else application, None, address)


SYSTEM = Actor(ActorKind.SYSTEM, "system")


def check_exam_transition(current: str, new: str) -> None:
    if new not in EXAM_TRANSITIONS[current]:
        if current == E.IN_PROGRESS and new in (E.CANCELLED, E.SCHEDULED, E.ORDERED):
            raise WorkflowError("in_progress", "exam is in progress at the modality and cannot be changed")
        raise WorkflowError("illegal_transition", f"an exam cannot go from {current} to {new}")


def check_step_transition(current: str, new: str) -> None:
    if new not in STEP_TRANSITIONS[current]:
        raise WorkflowError("illegal_transition", f"a scheduled step cannot go from {current} to {new}")


def check_performed_transition(current: str, new: str) -> None:
    if new not in PERFORMED_TRANSITIONS[current]:
        raise WorkflowError("illegal_transition", f"Performed Procedure Step is {current} and may no longer be updated")


_deferred = threading.local()


@contextmanager
def deferred_audit() -> Iterator[None]:
    """Write the audit events of the block as one INSERT when it ends without an exception.

    For a hot path whose workflow calls all share one transaction (an HL7 message): an event
    costs a batch slot instead of a round trip. Use it inside the transaction, around calls
    that either all succeed or roll back together (never around a savepoint the caller rolls
    back and then carries on past: its events would be flushed)."""
    if getattr(_deferred, "events", None) is not None:
        yield  # nested: the outer block writes
        return
    _deferred.events = []
    try:
        yield
        events, _deferred.events = _deferred.events, None
        AuditEvent.objects.bulk_create(events)
        if post_save.has_listeners(AuditEvent):  # bulk_create sends no post_save (syslog copy)
            for event in events:
                post_save.send(AuditEvent, instance=event, created=True, update_fields=None, raw=False)
    finally:
        _deferred.events = None


_unit = threading.local()


@contextmanager
def unit_of_work() -> Iterator[None]:
    """One transaction around several workflow calls that succeed or fail together (the calls
    of one HL7 message): the calls take no savepoints of their own (each costs a database round
    trip) and their audit events are one INSERT. Only for callers that never catch a workflow
    error inside the block and carry on: an error leaves the transaction to be rolled back."""
    outer = getattr(_unit, "active", False)
    with transaction.atomic(), deferred_audit():
        _unit.active = True
        try:
            yield
        finally:
            _unit.active = outer


def _atomic(function: Callable[P_, R_]) -> Callable[P_, R_]:
    """transaction.atomic for the workflow calls an HL7 message makes: no savepoint inside a
    unit_of_work (the whole unit rolls back on an error), a savepoint anywhere else."""

    @functools.wraps(function)
    def run(*args: P_.args, **kwargs: P_.kwargs) -> R_:
        with transaction.atomic(savepoint=not getattr(_unit, "active", False)):
            return function(*args, **kwargs)

    return run


def audit(
    actor: Actor,
    action: str,
    *,
    exam: RequestedProcedure | None = None,
    patient: Patient | None = None,
    outcome: str = "success",
    **detail: Any,
) -> AuditEvent:
    event = AuditEvent(
        actor_kind=actor.kind,
        actor=actor.name,
        user=actor.user if actor.user is not None and actor.user.pk else None,
        source_address=actor.address,
        action=action,
        outcome=outcome,
        requested_procedure=exam,
        patient=patient if patient is not None else (exam.order.patient if exam is not None else None),
        detail=detail,
    )
    pending = getattr(_deferred, "events", None)
    if pending is None:
        event.save(force_insert=True)
    else:
        pending.append(event)
    return event


def _set_exam_status(exam: RequestedProcedure, new: str, actor: Actor, action: str, **detail: Any) -> None:
    check_exam_transition(exam.status, new)
    old, exam.status, exam.status_changed_at = exam.status, new, timezone.now()
    exam.save(update_fields=["status", "status_changed_at", "updated_at"])
    audit(actor, action, exam=exam, old_status=old, new_status=new, **detail)


def _set_step_status(step: ScheduledStep, new: str) -> None:
    check_step_transition(step.status, new)
    step.status, step.status_changed_at = new, timezone.now()
    step.save(update_fields=["status", "status_changed_at", "updated_at"])


def _lock_exam(exam: RequestedProcedure) -> RequestedProcedure:
    return RequestedProcedure.objects.select_for_update().select_related("order__patient").get(pk=exam.pk)


def _announce(steps: Iterable[ScheduledStep]) -> None:
    steps = list(steps)
    if steps:
        scheduled_steps_changed.send(sender=ScheduledStep, steps=steps)


def _require_permission(actor: Actor, perm: str, what: str) -> None:
    if actor.kind == ActorKind.USER and not actor.user.has_perm(perm):
        raise WorkflowError("permission_denied", f"{actor.name} may not {what}")


# --- Identifiers the RIS assigns -------------------------------------------------------


def new_uid() -> str:
    """A globally unique DICOM UID under the site's root (a UUID as a decimal, PS3.5 B.2)."""
    return f"{settings.RIS_UID_ROOT}.{uuid.uuid4().int}"[:64]


def new_accession_number() -> str:
    """A fresh accession number: prefix + date + random part, at most 16 characters (SH)."""
    today = timezone.now().strftime("%y%m%d")
    return f"{settings.RIS_ACCESSION_PREFIX}{today}{uuid.uuid4().int % 10**8:08d}"[:16]


def new_short_id() -> str:
    """Requested Procedure ID / SPS ID when the order carries none (SH, 16 characters)."""
    return uuid.uuid4().hex[:16].upper()


# --- Patients (RAD-1, RAD-12) --------------------------------------------------------


@dataclass
class Demographics:
    family_name: str = ""
    given_name: str = ""
    middle_name: str = ""
    name_prefix: str = ""
    name_suffix: str = ""
    birth_date: dt.date | None = None
    sex: str = ""


def _open_steps_of_patient(patient: Patient) -> list[ScheduledStep]:
    return list(
        ScheduledStep.objects.filter(
            requested_procedure__order__patient=patient, status__in=OPEN_STEP_STATUSES
        ).select_related("requested_procedure__order__patient")
    )


# Hot-path lookups of an HL7 order, compiled once (ris.compiled).
_PATIENT_FOR_UPDATE = CompiledQuery(
    lambda patient_id, issuer: Patient.objects.select_for_update().filter(patient_id=patient_id, issuer=issuer),
    patient_id=str,
    issuer=str,
)
_ORDER_BY_PLACER = CompiledQuery(
    lambda number, issuer: ImagingOrder.objects.filter(placer_order_number=number, placer_issuer=issuer).values_list(
        "pk"
    )[:1],
    number=str,
    issuer=str,
)
_EXAM_BY_ACCESSION = CompiledQuery(
    lambda number, issuer: RequestedProcedure.objects.filter(
        accession_number=number, accession_issuer=issuer
    ).values_list("pk")[:1],
    number=str,
    issuer=str,
)


@_atomic
def register_patient(actor: Actor, patient_id: str, issuer: str, demographics: Demographics) -> Patient:
    """Create the patient, or update the demographics of the one with this id and issuer."""
    _require_permission(actor, "ris.schedule_exam", "register patients")
    if not patient_id:
        raise WorkflowError("invalid", "patient identifier is missing", field="patient_id")
    given = vars(demographics)
    patient = _PATIENT_FOR_UPDATE.first(patient_id=patient_id, issuer=issuer)
    if patient is None:
        patient, created = Patient.objects.select_for_update().get_or_create(
            patient_id=patient_id, issuer=issuer, defaults=given
        )
        if created:
            audit(actor, "patient.registered", patient=patient, changed=sorted(k for k, v in given.items() if v))
            return patient
    if patient.merged_into_id:
        raise WorkflowError("invalid", f"patient {patient_id} was merged into another record", field="patient_id")
    changed = {k: v for k, v in given.items() if getattr(patient, k) != v}
    if changed:
        for name, value in changed.items():
            setattr(patient, name, value)
        patient.save()
        audit(actor, "patient.updated", patient=patient, changed=sorted(changed))
        _announce(_open_steps_of_patient(patient))
    return patient


@_atomic
def merge_patients(actor: Actor, survivor: Patient, merged: Patient) -> Patient:
    """ADT^A40: the merged record's orders and exams move to the survivor; its id is kept as an
    extra identifier of the survivor, and the merged record points at the survivor."""
    _require_permission(actor, "ris.reconcile_exam", "merge patients")
    if survivor.pk == merged.pk:
        raise WorkflowError("invalid", "a patient cannot be merged into itself")
    survivor = Patient.objects.select_for_update().get(pk=survivor.pk)
    merged = Patient.objects.select_for_update().get(pk=merged.pk)
    if merged.merged_into_id:
        raise WorkflowError("invalid", f"patient {merged.patient_id} was already merged")
    moved_orders = list(merged.orders.values_list("pk", flat=True))
    merged.orders.update(patient=survivor)
    merged.identifiers.update(patient=survivor)
    PatientIdentifier.objects.get_or_create(
        value=merged.patient_id, issuer=merged.issuer, defaults={"patient": survivor, "kind": "MERGED"}
    )
    merged.merged_into, merged.merged_at = survivor, timezone.now()
    merged.save(update_fields=["merged_into", "merged_at", "updated_at"])
    detail = {"survivor": survivor.patient_id, "merged": merged.patient_id, "orders": moved_orders}
    audit(actor, "patient.merged", patient=survivor, **detail)
    audit(actor, "patient.merged_away", patient=merged, **detail)
    _announce(_open_steps_of_patient(survivor))
    return survivor


# --- Orders (RAD-2, RAD-13; UI order entry) ---------------------------------------------


@dataclass
class StepRequest:
    modality: str
    start: dt.datetime | None = None
    station_ae_title: str = ""
    station_name: str = ""
    location: str = ""
    sps_id: str = ""
    description: str = ""
    protocol_codes: list[dict[str, str]] = field(default_factory=list)
    performing_physician: str = ""


@dataclass
class ProcedureRequest:
    modality: str
    procedure_code: str = ""
    procedure_code_scheme: str = ""
    procedure_description: str = ""
    accession_number: str = ""
    accession_issuer: str = ""
    requested_procedure_id: str = ""
    study_instance_uid: str = ""
    steps: list[StepRequest] = field(default_factory=list)


@dataclass
class OrderRequest:
    placer_order_number: str = ""
    placer_issuer: str = ""
    filler_order_number: str = ""
    filler_issuer: str = ""
    ordering_physician: str = ""
    referring_physician: str = ""
    reason: str = ""
    priority: str = Priority.ROUTINE
    admission_id: str = ""
    patient_location: str = ""
    medical_alerts: str = ""
    allergies: str = ""
    patient_state: str = ""
    pregnancy_status: int | None = None
    transport_arrangements: str = ""
    source_application: str = ""
    source_facility: str = ""
    procedures: list[ProcedureRequest] = field(default_factory=list)


@_atomic
def place_order(actor: Actor, patient: Patient, request: OrderRequest) -> ImagingOrder:
    """A new order with its exams and steps. An exam whose steps all have a start time is
    SCHEDULED (its steps are on the worklist at commit); otherwise it waits ORDERED for a slot."""
    _require_permission(actor, "ris.schedule_exam", "place orders")
    if not request.procedures:
        raise WorkflowError("invalid", "an order needs at least one requested procedure", field="procedures")
    if request.placer_order_number and _ORDER_BY_PLACER.rows(
        number=request.placer_order_number, issuer=request.placer_issuer
    ):
        raise WorkflowError(
            "duplicate",
            f"placer order number {request.placer_order_number} already exists",
            field="placer_order_number",
        )
    order_fields = {k: v for k, v in vars(request).items() if k != "procedures"}
    order_fields["filler_order_number"] = request.filler_order_number or new_short_id()
    order = ImagingOrder.objects.create(patient=patient, **order_fields)
    audit(actor, "order.placed", patient=patient, placer=order.placer_order_number, filler=order.filler_order_number)
    for procedure in request.procedures:
        _create_exam(actor, order, procedure)
    _queue_filler_order(actor, order)
    return order


def _create_exam(actor: Actor, order: ImagingOrder, procedure: ProcedureRequest) -> RequestedProcedure:
    accession = procedure.accession_number or new_accession_number()
    if _EXAM_BY_ACCESSION.rows(number=accession, issuer=procedure.accession_issuer):
        raise WorkflowError("duplicate", f"accession number {accession} already exists", field="accession_number")
    study_uid = procedure.study_instance_uid or new_uid()
    # A UID we made from a UUID cannot exist yet (the unique constraint still guards it): only a
    # sender's UID is looked up, which saves a query per exam on the order hot path (issue 8).
    if procedure.study_instance_uid and RequestedProcedure.objects.filter(study_instance_uid=study_uid).exists():
        raise WorkflowError("duplicate", f"Study Instance UID {study_uid} already exists", field="study_instance_uid")
    steps = procedure.steps or [StepRequest(modality=procedure.modality, description=procedure.procedure_description)]
    # An exam whose steps all have a start time is written SCHEDULED at once (no second UPDATE).
    status = E.SCHEDULED if all(s.start is not None for s in steps) else E.ORDERED
    exam = RequestedProcedure.objects.create(
        order=order,
        accession_number=accession,
        accession_issuer=procedure.accession_issuer,
        requested_procedure_id=procedure.requested_procedure_id or accession,
        study_instance_uid=study_uid,
        procedure_code=procedure.procedure_code,
        procedure_code_scheme=procedure.procedure_code_scheme,
        procedure_description=procedure.procedure_description,
        modality=procedure.modality,
        status=status,
    )
    audit(actor, "exam.ordered", exam=exam, new_status=E.ORDERED)
    created = [
        ScheduledStep(
            requested_procedure=exam,
            sps_id=s.sps_id or new_short_id(),
            modality=s.modality or procedure.modality,
            station_ae_title=s.station_ae_title
            or station_for(s.modality or procedure.modality, procedure.procedure_code),
            station_name=s.station_name,
            location=s.location,
            start=s.start,
            description=s.description or procedure.procedure_description,
            protocol_codes=s.protocol_codes,
            performing_physician=s.performing_physician,
        )
        for s in steps
    ]
    # Announced before the INSERT: the worklist prepares the new steps' answers in memory and
    # the INSERT stores them (see worklist.datasets.refresh_steps).
    _announce(created)
    for step in created:
        step.save(force_insert=True)
    if status == E.SCHEDULED:
        check_exam_transition(E.ORDERED, E.SCHEDULED)
        steps_detail = [s.sps_id for s in created]
        audit(actor, "exam.scheduled", exam=exam, old_status=E.ORDERED, new_status=E.SCHEDULED, steps=steps_detail)
    return exam


@transaction.atomic
def schedule_exam(
    actor: Actor,
    exam: RequestedProcedure,
    *,
    start: dt.datetime,
    station_ae_title: str | None = None,
    station_name: str | None = None,
    location: str | None = None,
) -> RequestedProcedure:
    """Give an ORDERED exam its slot, or move a SCHEDULED (or DISCONTINUED) one to another.
    The exam's open steps take the new start and station; a discontinued exam gets a new step."""
    _require_permission(actor, "ris.schedule_exam", "schedule exams")
    exam = _lock_exam(exam)
    check_exam_transition(exam.status, E.SCHEDULED)
    steps = list(exam.scheduled_steps.filter(status__in=OPEN_STEP_STATUSES))
    if not steps:
        last = exam.scheduled_steps.order_by("-id").first()
        steps = [
            ScheduledStep(
                requested_procedure=exam,
                sps_id=new_short_id(),
                modality=last.modality if last else exam.modality,
                description=last.description if last else exam.procedure_description,
                protocol_codes=last.protocol_codes if last else [],
            )
        ]
    for step in steps:
        step.start = start
        step.station_ae_title = step.station_ae_title if station_ae_title is None else station_ae_title
        step.station_name = step.station_name if station_name is None else station_name
        step.location = step.location if location is None else location
        step.save()
    _set_exam_status(
        exam,
        E.SCHEDULED,
        actor,
        "exam.scheduled",
        start=start.isoformat(),
        station_ae_title=steps[0].station_ae_title,
        steps=[s.sps_id for s in steps],
    )
    _announce(steps)
    return exam


@_atomic
def cancel_exam(actor: Actor, exam: RequestedProcedure, reason: str = "") -> RequestedProcedure:
    """Cancel before the modality started: its steps leave the worklist. Refused once an MPPS
    is IN PROGRESS (HL7 answers "unable to cancel")."""
    _require_permission(actor, "ris.schedule_exam", "cancel exams")
    exam = _lock_exam(exam)
    check_exam_transition(exam.status, E.CANCELLED)
    steps = list(exam.scheduled_steps.filter(status__in=OPEN_STEP_STATUSES))
    for step in steps:
        _set_step_status(step, S.CANCELLED)
    _set_exam_status(exam, E.CANCELLED, actor, "exam.cancelled", reason=reason)
    _announce(steps)
    return exam


@_atomic
def discontinue_exam(actor: Actor, exam: RequestedProcedure, reason: str = "") -> RequestedProcedure:
    """Stop an exam (HL7 DC): every step not yet final is discontinued; performed data stays."""
    _require_permission(actor, "ris.schedule_exam", "discontinue exams")
    exam = _lock_exam(exam)
    check_exam_transition(exam.status, E.DISCONTINUED)
    steps = list(exam.scheduled_steps.exclude(status__in=FINAL_STEP_STATUSES))
    for step in steps:
        _set_step_status(step, S.DISCONTINUED)
    _set_exam_status(exam, E.DISCONTINUED, actor, "exam.discontinued", reason=reason)
    _announce(steps)
    return exam


@transaction.atomic
def record_patient_arrived(actor: Actor, exam: RequestedProcedure) -> RequestedProcedure:
    """The patient is at the department: SCHEDULED steps become ARRIVED (exam stays SCHEDULED)."""
    _require_permission(actor, "ris.perform_exam", "record patient arrival")
    exam = _lock_exam(exam)
    if exam.status != E.SCHEDULED:
        raise WorkflowError(
            "illegal_transition", f"arrival can only be recorded for a SCHEDULED exam, not {exam.status}"
        )
    steps = list(exam.scheduled_steps.filter(status=S.SCHEDULED))
    for step in steps:
        _set_step_status(step, S.ARRIVED)
    audit(actor, "exam.patient_arrived", exam=exam, steps=[s.sps_id for s in steps])
    _announce(steps)
    return exam


# --- Performed steps (RAD-6, RAD-7) ----------------------------------------------------


@dataclass
class ExpectedImage:
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""


def _exams_of(steps: Sequence[ScheduledStep]) -> list[RequestedProcedure]:
    ids = sorted({s.requested_procedure_id for s in steps})
    return list(RequestedProcedure.objects.select_for_update().select_related("order__patient").filter(pk__in=ids))


@transaction.atomic
def start_performed_step(
    actor: Actor,
    sop_instance_uid: str,
    steps: Sequence[ScheduledStep],
    *,
    attributes: dict | None = None,
    modality: str = "",
    pps_id: str = "",
    started_at: dt.datetime | None = None,
) -> PerformedStep:
    """MPPS N-CREATE (IN PROGRESS): the steps it names are STARTED and leave the worklist; their
    exams are IN_PROGRESS. Several steps = the group case."""
    _require_permission(actor, "ris.perform_exam", "perform exams")
    if PerformedStep.objects.filter(sop_instance_uid=sop_instance_uid).exists():
        raise WorkflowError("duplicate", f"MPPS {sop_instance_uid} already exists")
    if not steps:
        raise WorkflowError("invalid", "an MPPS must name at least one scheduled step")
    exams = _exams_of(steps)
    steps = list(ScheduledStep.objects.select_for_update().filter(pk__in=[s.pk for s in steps]))
    for exam in exams:
        if exam.status != E.IN_PROGRESS:
            _set_exam_status(exam, E.IN_PROGRESS, actor, "exam.started", mpps=sop_instance_uid)
    for step in steps:
        # Another MPPS may already have started this step (two consoles, or a split exam).
        if step.status != S.STARTED:
            _set_step_status(step, S.STARTED)
    performed = PerformedStep.objects.create(
        sop_instance_uid=sop_instance_uid,
        status=P.IN_PROGRESS,
        performed_station_ae_title=actor.name if actor.kind == ActorKind.AE else "",
        modality=modality,
        pps_id=pps_id,
        started_at=started_at or timezone.now(),
        attributes=attributes or {},
    )
    performed.scheduled_steps.set(steps)
    _announce(steps)
    return performed


def _lock_performed(performed: PerformedStep) -> PerformedStep:
    return PerformedStep.objects.select_for_update().get(pk=performed.pk)


@transaction.atomic
def complete_performed_step(
    actor: Actor,
    performed: PerformedStep,
    expected: Sequence[ExpectedImage] = (),
    *,
    attributes: dict | None = None,
    ended_at: dt.datetime | None = None,
) -> PerformedStep:
    """MPPS N-SET COMPLETED: its steps are COMPLETED; an exam whose steps are all final is
    COMPLETED, waiting for the listed instances to arrive."""
    return _finish_performed_step(actor, performed, P.COMPLETED, expected, attributes, ended_at, "")


@transaction.atomic
def discontinue_performed_step(
    actor: Actor,
    performed: PerformedStep,
    expected: Sequence[ExpectedImage] = (),
    *,
    reason: str = "",
    attributes: dict | None = None,
    ended_at: dt.datetime | None = None,
) -> PerformedStep:
    """MPPS N-SET DISCONTINUED: its steps are DISCONTINUED. An exam with no completed step is
    DISCONTINUED (offered for rescheduling); one with a completed step is COMPLETED."""
    return _finish_performed_step(actor, performed, P.DISCONTINUED, expected, attributes, ended_at, reason)


def _finish_performed_step(actor, performed, new_status, expected, attributes, ended_at, reason) -> PerformedStep:
    _require_permission(actor, "ris.perform_exam", "perform exams")
    performed = _lock_performed(performed)
    check_performed_transition(performed.status, new_status)
    steps = list(performed.scheduled_steps.all())
    exams = _exams_of(steps)
    step_status = S.COMPLETED if new_status == P.COMPLETED else S.DISCONTINUED
    for step in steps:
        _set_step_status(step, step_status)
    performed.status = new_status
    performed.ended_at = ended_at or timezone.now()
    performed.discontinuation_reason = reason
    if attributes is not None:
        performed.attributes = attributes
    performed.save()
    ExpectedInstance.objects.bulk_create(
        [
            ExpectedInstance(
                performed_step=performed,
                series_instance_uid=e.series_instance_uid,
                sop_instance_uid=e.sop_instance_uid,
                sop_class_uid=e.sop_class_uid,
            )
            for e in expected
        ],
        ignore_conflicts=True,
    )
    for exam in exams:
        statuses = set(exam.scheduled_steps.values_list("status", flat=True))
        if not statuses <= FINAL_STEP_STATUSES:
            continue
        final = E.COMPLETED if S.COMPLETED in statuses else E.DISCONTINUED
        _set_exam_status(
            exam,
            final,
            actor,
            f"exam.{final.lower()}",
            mpps=performed.sop_instance_uid,
            reason=reason,
            expected_instances=len(expected),
        )
    return performed


@transaction.atomic
def mark_ready_for_reading(actor: Actor, exam: RequestedProcedure, *, override_reason: str = "") -> RequestedProcedure:
    """All listed images arrived (arrival tracking), or a person accepts the exam as it is
    (override_reason says why; the QA problem is cleared). A person needs the reconcile permission."""
    _require_permission(actor, "ris.reconcile_exam", "accept exams for reading")
    exam = _lock_exam(exam)
    _set_exam_status(exam, E.READY_FOR_READING, actor, "exam.ready_for_reading", override_reason=override_reason)
    if exam.qa_problem and override_reason:
        exam.qa_problem = ""
        exam.save(update_fields=["qa_problem", "updated_at"])
    return exam


# --- Reports -------------------------------------------------------------------------

REPORT_DESTINATIONS = {"oru": ("oru",), "fhir": ("fhir",), "both": ("oru", "fhir")}


def report_destinations() -> tuple[str, ...]:
    """Where signed reports go: RIS_REPORT_OUTPUT, limited to the peers that are configured."""
    configured = {"oru": bool(settings.RIS_HIS_MLLP), "fhir": bool(settings.RIS_FHIR_BASE_URL)}
    return tuple(d for d in REPORT_DESTINATIONS.get(settings.RIS_REPORT_OUTPUT, ("oru",)) if configured[d])


@transaction.atomic
def save_report_draft(actor: Actor, exam: RequestedProcedure, *, findings: str, impression: str) -> Report:
    """Keep a draft (not signed, nothing sent, exam status unchanged). The latest unsigned draft
    is updated in place; signed versions never are."""
    _require_permission(actor, "ris.sign_report", "write reports")
    exam = _lock_exam(exam)
    if exam.status not in REPORTABLE_STATUSES | SIGNED_STATUSES:
        raise WorkflowError("illegal_transition", f"an exam in status {exam.status} cannot be reported yet")
    latest = exam.reports.order_by("-version").first()
    if latest and latest.status == ReportStatus.DRAFT:
        latest.findings, latest.impression = findings, impression
        latest.save(update_fields=["findings", "impression"])
        return latest
    return Report.objects.create(
        requested_procedure=exam,
        version=(latest.version + 1) if latest else 1,
        status=ReportStatus.DRAFT,
        findings=findings,
        impression=impression,
        author=actor.user,
        supersedes=None,
    )


@transaction.atomic
def sign_report(
    actor: Actor, exam: RequestedProcedure, *, findings: str, impression: str, final: bool, amendment: str = ""
) -> Report:
    """Sign a preliminary or final report. A final on a FINAL/AMENDED exam is an amendment:
    a "correction" (default; the text replaces the previous version) or an "addendum" (the text
    is added to the previous version's findings). The version and one outbox row per
    destination, its payload rendered (ris.outbox), are written in this transaction."""
    from ris import outbox

    if actor.kind != ActorKind.USER:
        raise WorkflowError("permission_denied", "only a radiologist signs reports")
    _require_permission(actor, "ris.sign_report", "sign reports")
    if not (findings.strip() or impression.strip()):
        raise WorkflowError("invalid", "a signed report needs findings or an impression", field="findings")
    exam = _lock_exam(exam)
    if exam.status in SIGNED_STATUSES:
        if not final:
            raise WorkflowError("illegal_transition", "a signed final report can only be amended by another final")
        exam_status, report_status = E.AMENDED, ReportStatus.AMENDED
        amendment = amendment or AMENDMENT_CORRECTION
        if amendment not in AMENDMENT_KINDS:
            raise WorkflowError("invalid", f"amendment must be one of {sorted(AMENDMENT_KINDS)}", field="amendment")
    else:
        if amendment:
            raise WorkflowError("invalid", "only a signed final report can be amended", field="amendment")
        exam_status = E.FINAL if final else E.PRELIMINARY
        report_status = ReportStatus.FINAL if final else ReportStatus.PRELIMINARY
    check_exam_transition(exam.status, exam_status)
    latest = exam.reports.order_by("-version").first()
    previous_signed = exam.reports.exclude(status=ReportStatus.DRAFT).order_by("-version").first()
    if amendment == AMENDMENT_ADDENDUM:
        findings, impression = _with_addendum(previous_signed, actor, findings, impression)
    elif _same_text_again(previous_signed, report_status, findings, impression):
        raise WorkflowError("duplicate", f"report already signed {previous_signed.status} with this text")
    fields = dict(
        status=report_status,
        amendment=amendment,
        findings=findings,
        impression=impression,
        author=actor.user,
        signed_at=timezone.now(),
        supersedes=previous_signed,
    )
    if latest and latest.status == ReportStatus.DRAFT:
        for name, value in fields.items():
            setattr(latest, name, value)
        latest.save()
        report = latest
    else:
        report = Report.objects.create(
            requested_procedure=exam, version=(latest.version + 1) if latest else 1, **fields
        )
    _set_exam_status(
        exam, exam_status, actor, "report.signed", report_version=report.version, report_status=report_status
    )
    outbound = [
        outbox.create_message(
            destination=d, requested_procedure=exam, report=report, message_control_id=f"R{report.pk}-{d}"
        )
        for d in report_destinations()
    ]
    transaction.on_commit(lambda: report_signed.send(sender=Report, report=report, outbound=outbound))
    return report


# --- Report amendments (issue 6) ---------------------------------------------------------

AMENDMENT_CORRECTION = "correction"
AMENDMENT_ADDENDUM = "addendum"
AMENDMENT_KINDS = frozenset({AMENDMENT_CORRECTION, AMENDMENT_ADDENDUM})


def _same_text_again(previous: Report | None, report_status: str, findings: str, impression: str) -> bool:
    """A second preliminary, or a correction, that repeats the signed text (a double submit)."""
    if previous is None or report_status == ReportStatus.FINAL:
        return False
    return (previous.findings, previous.impression) == (findings, impression)


def _with_addendum(previous: Report, actor: Actor, findings: str, impression: str) -> tuple[str, str]:
    """An addendum keeps the signed text and adds its own below the findings, dated and signed,
    so every version on its own is the whole report the clinician reads."""
    from ris.timeutil import to_local

    added = "\n".join(t.strip() for t in (findings, impression) if t.strip())
    when = to_local(timezone.now()).strftime("%Y-%m-%d %H:%M")
    text = f"{previous.findings.rstrip()}\n\nADDENDUM {when} ({actor.name}):\n{added}".lstrip()
    return text, previous.impression


# --- Exam tracking: MPPS, image arrival, completeness, status to the HIS (issue 5) ---------
#
# swf-spec §6 (MPPS as SCP) and §7 (deciding a study is complete). The DICOM adapters
# (worklist/mpps.py, storage.py, ian.py) translate the wire into these calls; the rules live here.

ACTIVE_STEP_STATUSES = frozenset({S.SCHEDULED, S.ARRIVED, S.STARTED, S.COMPLETED})
AVAILABLE = ("ONLINE", "NEARLINE")  # Instance Availability (0008,0056) values that count as arrived
QA_IMAGES_MISSING = "images missing"
QA_EXTRA_INSTANCES = "extra instances"
QA_UNMATCHED_REFERENCE = "MPPS named unknown scheduled steps"


@dataclass
class StepReference:
    """One item of the Scheduled Step Attributes Sequence (0040,0270) of an MPPS."""

    study_instance_uid: str = ""
    accession_number: str = ""
    requested_procedure_id: str = ""
    sps_id: str = ""


@dataclass
class PerformedPatient:
    """The patient an MPPS names, used only when it matches no scheduled step."""

    patient_id: str = ""
    issuer: str = ""
    demographics: Demographics = field(default_factory=Demographics)


def find_exam(study_instance_uid: str, accession_number: str) -> RequestedProcedure | None:
    """The exam of a study: by Study Instance UID first, then by accession number (contract)."""
    if study_instance_uid:
        exam = RequestedProcedure.objects.filter(study_instance_uid=study_instance_uid).first()
        if exam is not None:
            return exam
    if accession_number:
        return RequestedProcedure.objects.filter(accession_number=accession_number).order_by("-id").first()
    return None


def _steps_for_reference(ref: StepReference) -> list[ScheduledStep]:
    exam = find_exam(ref.study_instance_uid, ref.accession_number)
    if ref.sps_id:
        candidates = ScheduledStep.objects.filter(sps_id=ref.sps_id)
        if exam is not None:
            candidates = candidates.filter(requested_procedure=exam)
        candidates = list(candidates[:2])
        return candidates if len(candidates) == 1 else []
    if exam is None:
        return []
    # The modality knew the exam but not the step (no SPS ID): every active step of the exam.
    return list(exam.scheduled_steps.filter(status__in=ACTIVE_STEP_STATUSES))


def find_scheduled_steps(references: Sequence[StepReference]) -> tuple[list[ScheduledStep], list[StepReference]]:
    """The scheduled steps an MPPS performs (several = the group case), and the references that
    matched nothing. A reference without SPS ID, accession and Study UID is the unscheduled case."""
    steps: dict[int, ScheduledStep] = {}
    unmatched = []
    for ref in references:
        found = _steps_for_reference(ref)
        if not found and (ref.sps_id or ref.accession_number or ref.requested_procedure_id):
            unmatched.append(ref)
        steps.update({s.pk: s for s in found})
    return list(steps.values()), unmatched


def _patient_for_unscheduled(actor: Actor, patient: PerformedPatient) -> Patient:
    if patient.patient_id:
        existing = Patient.objects.filter(patient_id=patient.patient_id, issuer=patient.issuer).first()
        if existing is not None:
            return existing.merged_into or existing
        return register_patient(actor, patient.patient_id, patient.issuer, patient.demographics)
    return register_patient(actor, f"UNSCHED-{new_short_id()[:8]}", "RIS", patient.demographics)


def _unused(value: str, **lookup: str) -> str:
    return value if value and not RequestedProcedure.objects.filter(**lookup).exists() else ""


def _create_unscheduled_exam(
    actor: Actor, patient: PerformedPatient, references: Sequence[StepReference], modality: str, description: str
) -> RequestedProcedure:
    """An exception exam for an MPPS without a known scheduled step: flagged for a scheduler to
    match to an order or keep (swf-spec §6 "Unscheduled")."""
    ref = references[0] if references else StepReference()
    step = StepRequest(modality=modality or "OT", station_ae_title=actor.name[:16], description=description)
    procedure = ProcedureRequest(
        modality=modality or "OT",
        procedure_description=description,
        accession_number=_unused(ref.accession_number, accession_number=ref.accession_number),
        study_instance_uid=_unused(ref.study_instance_uid, study_instance_uid=ref.study_instance_uid),
        steps=[step],
    )
    order = place_order(actor, _patient_for_unscheduled(actor, patient), OrderRequest(procedures=[procedure]))
    exam = order.requested_procedures.get()
    exam.unscheduled = True
    exam.needs_reconciliation = True
    exam.save(update_fields=["unscheduled", "needs_reconciliation", "updated_at"])
    audit(actor, "exam.unscheduled", exam=exam, references=[vars(r) for r in references])
    return exam


@transaction.atomic
def record_performed_step_started(
    actor: Actor,
    sop_instance_uid: str,
    references: Sequence[StepReference],
    *,
    patient: PerformedPatient,
    attributes: dict,
    modality: str = "",
    pps_id: str = "",
    description: str = "",
    started_at: dt.datetime | None = None,
) -> PerformedStep:
    """MPPS N-CREATE (RAD-6): link the steps named in the Scheduled Step Attributes Sequence and
    start them; no known step = an unscheduled exam flagged for reconciliation. References that
    match nothing are kept in the MPPS and flagged on the exam, never refused."""
    if PerformedStep.objects.filter(sop_instance_uid=sop_instance_uid).exists():
        raise WorkflowError("duplicate", f"MPPS {sop_instance_uid} already exists")
    steps, unmatched = find_scheduled_steps(references)
    if not steps:
        steps = list(_create_unscheduled_exam(actor, patient, references, modality, description).scheduled_steps.all())
    performed = start_performed_step(
        actor,
        sop_instance_uid,
        steps,
        attributes=attributes,
        modality=modality,
        pps_id=pps_id,
        started_at=started_at,
    )
    exams = _exams_of(steps)
    for exam in exams:
        if unmatched and not exam.unscheduled:
            _flag_qa(exam, QA_UNMATCHED_REFERENCE)
            audit(actor, "mpps.unmatched_reference", exam=exam, references=[vars(r) for r in unmatched])
        queue_his_status(exam, "IP", performed)
    return performed


@transaction.atomic
def update_performed_step(actor: Actor, performed: PerformedStep, attributes: dict) -> PerformedStep:
    """MPPS N-SET that stays IN PROGRESS: the merged attributes replace the stored ones."""
    performed = _lock_performed(performed)
    if performed.status != P.IN_PROGRESS:
        check_performed_transition(performed.status, P.IN_PROGRESS)
    performed.attributes = attributes
    performed.save(update_fields=["attributes", "updated_at"])
    return performed


@transaction.atomic
def record_performed_step_ended(
    actor: Actor,
    performed: PerformedStep,
    status: str,
    expected: Sequence[ExpectedImage],
    *,
    attributes: dict,
    ended_at: dt.datetime | None = None,
    reason: str = "",
) -> list[RequestedProcedure]:
    """MPPS N-SET COMPLETED/DISCONTINUED (RAD-7). Returns the exams it touched; the caller asks
    for a completeness check of those that are COMPLETED once this has committed."""
    if status == P.COMPLETED:
        performed = complete_performed_step(actor, performed, expected, attributes=attributes, ended_at=ended_at)
    elif status == P.DISCONTINUED:
        performed = discontinue_performed_step(
            actor, performed, expected, reason=reason, attributes=attributes, ended_at=ended_at
        )
    else:
        raise WorkflowError("invalid", f"{status!r} is not a final MPPS status", field="PerformedProcedureStepStatus")
    exams = _exams_of(list(performed.scheduled_steps.all()))
    for exam in exams:
        if exam.status == E.COMPLETED:
            queue_his_status(exam, "CM", performed)
        elif exam.status == E.DISCONTINUED:
            queue_his_status(exam, "DC", performed)
    return exams


def _flag_qa(exam: RequestedProcedure, problem: str) -> None:
    if problem not in exam.qa_problem:
        exam.qa_problem = "; ".join(p for p in (exam.qa_problem, problem) if p)[:200]
        exam.save(update_fields=["qa_problem", "updated_at"])


def _clear_qa(exam: RequestedProcedure, prefix: str) -> None:
    kept = [p for p in exam.qa_problem.split("; ") if p and not p.startswith(prefix)]
    if "; ".join(kept) != exam.qa_problem:
        exam.qa_problem = "; ".join(kept)
        exam.save(update_fields=["qa_problem", "updated_at"])


# Order status (ORC-5, HL7 table 0038) sent to the HIS on each exam event (RAD-3 / RAD-13).


def his_status_updates() -> frozenset[str]:
    """Which ORC-5 statuses the HIS wants (RIS_HIS_STATUS_UPDATES); none without RIS_HIS_MLLP."""
    if not settings.RIS_HIS_MLLP:
        return frozenset()
    return frozenset(s.strip().upper() for s in settings.RIS_HIS_STATUS_UPDATES.split(",") if s.strip())


def queue_his_status(exam: RequestedProcedure, order_status: str, performed: PerformedStep | None = None) -> None:
    """Write an ORM^O01 status message for the HIS into the outbox, in the caller's transaction.
    The control id is stable per exam, status and MPPS, so a repeat writes nothing."""
    if order_status not in his_status_updates():
        return
    from hl7.status_messages import build_order_status_message  # the HL7 wire belongs to hl7/

    control_id = f"S{exam.pk}{order_status}{performed.pk if performed else 0}"
    if OutboundMessage.objects.filter(message_control_id=control_id).exists():
        return
    from ris import outbox

    payload = build_order_status_message(exam, order_status, control_id)
    message = outbox.create_message(
        destination="orm", requested_procedure=exam, message_control_id=control_id, payload=payload
    )
    outbox.enqueue_on_commit([message])


def _queue_filler_order(actor: Actor, order: ImagingOrder) -> None:
    """RAD-3 filler order: an order a RIS user placed (not an HL7 placer's) is announced to the
    HIS as ORM^O01 SN, written into the outbox in the order's transaction and linked to its first
    exam, so that exam's status messages follow it. Off without RIS_HIS_MLLP or with
    RIS_HIS_FILLER_ORDERS=0."""
    if actor.kind != ActorKind.USER or order.source_application:
        return
    if not (settings.RIS_HIS_MLLP and settings.RIS_HIS_FILLER_ORDERS):
        return
    from hl7.filler_orders import build_filler_order_message  # the HL7 wire belongs to hl7/
    from ris import outbox

    control_id = f"F{order.pk}"
    payload = build_filler_order_message(order, control_id, timezone.now())
    first_exam = order.requested_procedures.order_by("id").first()
    message = outbox.create_message(
        destination="orm", requested_procedure=first_exam, message_control_id=control_id, payload=payload
    )
    outbox.enqueue_on_commit([message])


# Arrival of instances (C-STORE, IAN) and the completeness decision (swf-spec §7).


@dataclass
class ArrivedInstance:
    """One SOP instance known to be available: stored here (C-STORE) or announced (IAN)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""
    accession_number: str = ""
    patient_id: str = ""
    modality: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    study_date: dt.date | None = None
    availability: str = "ONLINE"
    retrieve_ae_title: str = ""
    file_path: str = ""


@transaction.atomic
def record_study_arrival(actor: Actor, exam: RequestedProcedure | None, first: ArrivedInstance) -> Study:
    """The study an arrival belongs to, created on its first instance. `exam` is the match the
    caller found; an already matched study keeps its exam, an unmatched one takes it now."""
    now = timezone.now()
    study, created = Study.objects.get_or_create(
        study_instance_uid=first.study_instance_uid,
        defaults={
            "requested_procedure": exam,
            "accession_number": first.accession_number[:16],
            "patient_id": first.patient_id[:64],
            "study_date": first.study_date,
            "last_arrival_at": now,
        },
    )
    if created:
        audit(actor, "study.arrived" if exam else "study.unmatched", exam=exam, study=study.study_instance_uid)
        return study
    study.last_arrival_at = now
    fields = ["last_arrival_at"]
    if study.requested_procedure_id is None and exam is not None:
        study.requested_procedure = exam
        fields.append("requested_procedure")
        audit(actor, "study.matched", exam=exam, study=study.study_instance_uid)
    study.save(update_fields=fields)
    return study


def touch_studies(study_ids: Iterable[int]) -> None:
    """Something arrived for these studies just now: the quiet period starts again."""
    Study.objects.filter(pk__in=list(study_ids)).update(last_arrival_at=timezone.now())


def record_series_arrival(study_id: int, item: ArrivedInstance) -> int:
    series, _ = Series.objects.get_or_create(
        series_instance_uid=item.series_instance_uid,
        defaults={"study_id": study_id, "modality": item.modality[:16], "series_number": item.series_number},
    )
    return series.pk


def record_instances(actor: Actor, source: str, series_id: int, items: Sequence[ArrivedInstance]) -> None:
    """Insert the instances, or update where a repeat says they now are: idempotent by SOP
    Instance UID (a C-STORE repeat moves the file, an IAN repeat changes availability).

    One INSERT ... ON CONFLICT statement per instance (SQLite and PostgreSQL alike) on the
    storage hot path: the ORM's bulk upsert costs a transaction and about a millisecond more."""
    refreshed = ("availability", "file_path") if source == "STORE" else ("availability", "retrieve_ae_title")
    table = connection.ops.quote_name(Instance._meta.db_table)
    sql = (
        f"INSERT INTO {table} (sop_instance_uid, series_id, sop_class_uid, instance_number, source,"
        " source_ae_title, availability, retrieve_ae_title, file_path, received_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (sop_instance_uid) DO UPDATE SET "
        + ", ".join(f"{column} = excluded.{column}" for column in refreshed)
    )
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    rows = [
        (
            item.sop_instance_uid,
            series_id,
            item.sop_class_uid[:64],
            item.instance_number,
            source,
            actor.name[:16],
            item.availability[:16],
            item.retrieve_ae_title[:16],
            item.file_path[:500],
            now,
        )
        for item in items
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


@transaction.atomic
def record_instances_arrived(
    actor: Actor, exam: RequestedProcedure | None, source: str, instances: Sequence[ArrivedInstance]
) -> Study:
    """Record instances of ONE study in one transaction (an IAN, a batch). Idempotent by UID."""
    study = record_study_arrival(actor, exam, instances[0])
    by_series: dict[str, list[ArrivedInstance]] = {}
    for item in instances:
        by_series.setdefault(item.series_instance_uid, []).append(item)
    for items in by_series.values():
        record_instances(actor, source, record_series_arrival(study.pk, items[0]), items)
    return study


def _studies_claimed_by(study_uid: str, accession: str):
    """Studies without an exam that an exam with this Study Instance UID or accession claims."""
    by_accession = Q(accession_number=accession) if accession else Q(pk__in=[])
    return Study.objects.filter(Q(study_instance_uid=study_uid) | by_accession, requested_procedure__isnull=True)


# claims_unmatched_study runs after every new order, before the HIS gets its ACK: compiled once.
_CLAIMED_BY_UID = CompiledQuery(
    lambda uid: _studies_claimed_by(uid, "").values_list("pk")[:1],
    uid=str,
)
_CLAIMED_BY_UID_OR_ACCESSION = CompiledQuery(
    lambda uid, accession: _studies_claimed_by(uid, accession).values_list("pk")[:1],
    uid=str,
    accession=str,
)


def claims_unmatched_study(exam: RequestedProcedure) -> bool:
    """Whether unmatched_studies(exam) finds anything."""
    if exam.accession_number:
        return bool(_CLAIMED_BY_UID_OR_ACCESSION.rows(uid=exam.study_instance_uid, accession=exam.accession_number))
    return bool(_CLAIMED_BY_UID.rows(uid=exam.study_instance_uid))


def unmatched_studies(exam: RequestedProcedure | None = None):
    """Studies recorded without an exam (images or an IAN came before the order) that an exam now
    claims by Study Instance UID or accession number; those `exam` claims when given."""
    if exam is not None:
        return _studies_claimed_by(exam.study_instance_uid, exam.accession_number)
    studies = Study.objects.filter(requested_procedure__isnull=True)
    by_uid = RequestedProcedure.objects.filter(study_instance_uid=OuterRef("study_instance_uid"))
    by_accession = RequestedProcedure.objects.filter(accession_number=OuterRef("accession_number"))
    return studies.filter(Exists(by_uid) | (~Q(accession_number="") & Exists(by_accession)))


@transaction.atomic
def match_unmatched_study(actor: Actor, study: Study) -> RequestedProcedure | None:
    """Give a study that arrived before its order the exam it belongs to now: by Study Instance
    UID, then accession number (the rule of a fresh arrival). Returns that exam, or None."""
    study = Study.objects.select_for_update().filter(pk=study.pk, requested_procedure__isnull=True).first()
    exam = find_exam(study.study_instance_uid, study.accession_number) if study is not None else None
    if exam is None:
        return None
    study.requested_procedure = exam
    study.save(update_fields=["requested_procedure"])
    audit(actor, "study.matched", exam=exam, study=study.study_instance_uid, arrived_before_order=True)
    return exam


@dataclass
class Completeness:
    """The §7 reconciliation of one exam: expected (E) against arrived (A), by SOP Instance UID.
    The sets are compared in SQL; only their sizes come back."""

    performed_ids: list[int]
    expected: int
    missing: int
    extra: int
    series_complete: bool | None  # the MPPS's series arrived (None: it lists instances, or nothing)
    last_arrival_at: dt.datetime | None
    mpps_completed: bool

    @property
    def arrived(self) -> int:
        return self.expected - self.missing

    @property
    def images_complete(self) -> bool:
        if not self.mpps_completed:
            return False
        if self.expected:
            return not self.missing
        # An MPPS without a Referenced Image Sequence: rely on its series UIDs (and the quiet period).
        if self.series_complete is not None:
            return self.series_complete
        return bool(self.extra)


def _series_uids(attributes: dict) -> set[str]:
    """Series Instance UIDs of the Performed Series Sequence (0040,0340) in DICOM JSON."""
    items = attributes.get("00400340", {}).get("Value", []) or []
    return {uid for item in items for uid in item.get("0020000E", {}).get("Value", []) or [] if uid}


def _expected_instances(performed_ids: Sequence[int]):
    return ExpectedInstance.objects.filter(performed_step__in=performed_ids)


def _not_arrived() -> Exists:
    """For an expected instance: nothing with its UID is stored here or available at the PACS."""
    return ~Exists(Instance.objects.filter(sop_instance_uid=OuterRef("sop_instance_uid"), availability__in=AVAILABLE))


def _series_arrived(performed: Sequence[PerformedStep]) -> bool | None:
    expected_series = set().union(*(_series_uids(p.attributes) for p in performed))
    if not expected_series:
        return None
    arrived = Series.objects.filter(series_instance_uid__in=expected_series, instances__availability__in=AVAILABLE)
    return arrived.values("series_instance_uid").distinct().count() == len(expected_series)


def assess_completeness(exam: RequestedProcedure) -> Completeness:
    performed = list(
        PerformedStep.objects.filter(
            scheduled_steps__requested_procedure=exam, status__in=(P.COMPLETED, P.DISCONTINUED)
        ).distinct()
    )
    ids = [p.pk for p in performed]
    counts = _expected_instances(ids).aggregate(
        expected=Count("sop_instance_uid", distinct=True),
        missing=Count("sop_instance_uid", distinct=True, filter=_not_arrived()),
    )
    listed = ExpectedInstance.objects.filter(performed_step__in=ids, sop_instance_uid=OuterRef("sop_instance_uid"))
    extra = (
        Instance.objects.filter(series__study__requested_procedure=exam, availability__in=AVAILABLE)
        .filter(~Exists(listed))
        .count()
    )
    return Completeness(
        performed_ids=ids,
        expected=counts["expected"],
        missing=counts["missing"],
        extra=extra,
        series_complete=None if counts["expected"] else _series_arrived(performed),
        last_arrival_at=_last_arrival(exam, ids),
        mpps_completed=any(p.status == P.COMPLETED for p in performed),
    )


def _last_arrival(exam: RequestedProcedure, performed_ids: Sequence[int]) -> dt.datetime | None:
    """The quiet period counts from the last arrival in the exam's studies, and in any study
    that holds a listed instance (one not matched to the exam yet)."""
    listed = _expected_instances(performed_ids).values("sop_instance_uid")
    holding = Series.objects.filter(instances__sop_instance_uid__in=listed).values("study_id")
    studies = Study.objects.filter(Q(requested_procedure=exam) | Q(pk__in=holding))
    return studies.aggregate(last=Max("last_arrival_at"))["last"]


@dataclass
class ArrivalDecision:
    """What a completeness check concluded: `ready` (the exam is now READY_FOR_READING),
    `wait_seconds` (check again then), or neither (nothing to do until something arrives)."""

    outcome: str  # ready | waiting_quiet | incomplete | images_missing | not_applicable
    wait_seconds: float = 0.0
    missing: int = 0


def _arrival_decision(exam: RequestedProcedure, now: dt.datetime) -> tuple[ArrivalDecision, Completeness]:
    c = assess_completeness(exam)
    if not c.images_complete:
        waited = (now - exam.status_changed_at).total_seconds()
        timeout = settings.RIS_ARRIVAL_MISSING_TIMEOUT_SECONDS
        if waited < timeout:
            return ArrivalDecision("incomplete", wait_seconds=timeout - waited, missing=c.missing), c
        return ArrivalDecision("images_missing", missing=c.missing), c
    return _quiet_decision(c.last_arrival_at, now), c


def _quiet_decision(last_arrival_at: dt.datetime | None, now: dt.datetime) -> ArrivalDecision:
    quiet = settings.RIS_ARRIVAL_QUIET_SECONDS
    since_last = (now - last_arrival_at).total_seconds() if last_arrival_at else quiet
    if since_last < quiet:
        return ArrivalDecision("waiting_quiet", wait_seconds=quiet - since_last)
    return ArrivalDecision("ready")


def settle_exam_arrivals(actor: Actor, exam: RequestedProcedure, *, now: dt.datetime | None = None) -> ArrivalDecision:
    """The completeness decision for a COMPLETED exam (swf-spec §7): READY_FOR_READING once the
    MPPS is COMPLETED, every instance it lists has arrived and nothing arrived for the quiet
    period. Extras are flagged, never blocking; instances still missing after the timeout put the
    exam on the QA list. Most checks change nothing and only read; a decision that changes the
    exam is recorded under its row lock, where its status decides (idempotent)."""
    exam = RequestedProcedure.objects.filter(pk=exam.pk).first()
    if exam is None or exam.status != E.COMPLETED:
        return ArrivalDecision("not_applicable")
    now = now or timezone.now()
    decision, c = _arrival_decision(exam, now)
    newly_missing = decision.outcome == "images_missing" and QA_IMAGES_MISSING not in exam.qa_problem
    if decision.outcome == "ready" or newly_missing:
        return _record_arrival_decision(actor, exam, decision, c, now)
    return decision


@transaction.atomic
def _record_arrival_decision(
    actor: Actor, exam: RequestedProcedure, decision: ArrivalDecision, c: Completeness, now: dt.datetime
) -> ArrivalDecision:
    """Under the exam's row lock: another check may have decided first (the status says), and an
    instance may have arrived since the read (the quiet period starts again)."""
    exam = _lock_exam(exam)
    if exam.status != E.COMPLETED:
        return ArrivalDecision("not_applicable")
    if decision.outcome == "images_missing":
        if QA_IMAGES_MISSING not in exam.qa_problem:
            _clear_qa(exam, QA_IMAGES_MISSING)
            _flag_qa(exam, f"{QA_IMAGES_MISSING}: {c.missing} of {c.expected}")
            missing = _expected_instances(c.performed_ids).filter(_not_arrived()).order_by("sop_instance_uid")
            uids = list(dict.fromkeys(missing.values_list("sop_instance_uid", flat=True)[:200]))[:100]
            audit(actor, "exam.images_missing", exam=exam, missing=uids, count=c.missing)
        return decision
    decision = _quiet_decision(_last_arrival(exam, c.performed_ids), now)
    if decision.outcome != "ready":
        return decision
    _clear_qa(exam, QA_IMAGES_MISSING)
    if c.extra:
        _flag_qa(exam, f"{QA_EXTRA_INSTANCES}: {c.extra}")
    _set_exam_status(
        exam,
        E.READY_FOR_READING,
        actor,
        "exam.ready_for_reading",
        expected=c.expected,
        arrived=c.arrived,
        extra=c.extra,
    )
    return decision


# How far an exam had come, as the path an ordered exam takes to get there.
_PROGRESS_PATH = {
    E.IN_PROGRESS: (E.IN_PROGRESS,),
    E.COMPLETED: (E.IN_PROGRESS, E.COMPLETED),
    E.READY_FOR_READING: (E.IN_PROGRESS, E.COMPLETED, E.READY_FOR_READING),
    E.DISCONTINUED: (E.IN_PROGRESS, E.DISCONTINUED),
}
_STEP_PATH = {S.STARTED: (S.STARTED,), S.COMPLETED: (S.STARTED, S.COMPLETED), S.DISCONTINUED: (S.DISCONTINUED,)}


@transaction.atomic
def reconcile_unscheduled_exam(
    actor: Actor, unscheduled: RequestedProcedure, target: RequestedProcedure
) -> RequestedProcedure:
    """A scheduler matches an unscheduled exam to the order it belonged to. The performed work
    moves to `target` (its open steps take the MPPS, its exam the studies that arrived) and
    `target` takes over the progress; the unscheduled exam is closed as CANCELLED ("reconciled",
    a transition outside the table on purpose: the work was not cancelled, it moved)."""
    _require_permission(actor, "ris.reconcile_exam", "reconcile exams")
    unscheduled, target = _lock_exam(unscheduled), _lock_exam(target)
    if not unscheduled.needs_reconciliation or unscheduled.pk == target.pk:
        raise WorkflowError("invalid", f"exam {unscheduled.accession_number} does not need reconciliation")
    if unscheduled.status not in _PROGRESS_PATH:
        raise WorkflowError("illegal_transition", f"an exam in status {unscheduled.status} cannot be reconciled")
    if target.status not in (E.ORDERED, E.SCHEDULED):
        raise WorkflowError("illegal_transition", f"exam {target.accession_number} was already {target.status}")
    old_steps = list(unscheduled.scheduled_steps.select_for_update())
    new_steps = list(target.scheduled_steps.select_for_update().filter(status__in=OPEN_STEP_STATUSES))
    if not new_steps:
        raise WorkflowError("invalid", f"exam {target.accession_number} has no open scheduled step")
    for step in new_steps:
        for status in _STEP_PATH.get(old_steps[0].status, (S.STARTED,)):
            _set_step_status(step, status)
    for performed in PerformedStep.objects.filter(scheduled_steps__in=old_steps).distinct():
        performed.scheduled_steps.remove(*old_steps)
        performed.scheduled_steps.add(*new_steps)
    moved = Study.objects.filter(requested_procedure=unscheduled).update(requested_procedure=target)
    for status in _PROGRESS_PATH[unscheduled.status]:
        _set_exam_status(target, status, actor, "exam.reconciled", unscheduled=unscheduled.accession_number)
    if unscheduled.qa_problem:
        _flag_qa(target, unscheduled.qa_problem)
    ScheduledStep.objects.filter(pk__in=[s.pk for s in old_steps]).update(
        status=S.CANCELLED, status_changed_at=timezone.now()
    )
    old_status = unscheduled.status
    unscheduled.status, unscheduled.status_changed_at = E.CANCELLED, timezone.now()
    unscheduled.needs_reconciliation = False
    unscheduled.save(update_fields=["status", "status_changed_at", "needs_reconciliation", "updated_at"])
    audit(
        actor,
        "exam.reconciled_into",
        exam=unscheduled,
        old_status=old_status,
        new_status=E.CANCELLED,
        target=target.accession_number,
        studies=moved,
    )
    _announce(new_steps + old_steps)
    if target.status == E.COMPLETED:
        completeness_check_needed.send(sender=RequestedProcedure, exam_ids=[target.pk])
    return target


@transaction.atomic
def keep_unscheduled_exam(actor: Actor, exam: RequestedProcedure) -> RequestedProcedure:
    """A scheduler accepts an unscheduled exam as its own order: it leaves the reconciliation list."""
    _require_permission(actor, "ris.reconcile_exam", "reconcile exams")
    exam = _lock_exam(exam)
    if not exam.needs_reconciliation:
        raise WorkflowError("invalid", f"exam {exam.accession_number} does not need reconciliation")
    exam.needs_reconciliation = False
    exam.save(update_fields=["needs_reconciliation", "updated_at"])
    audit(actor, "exam.reconciled_kept", exam=exam)
    return exam


# --- Order control from the HIS: lookups, station rules, changes (issue 3) -------------


def station_for(modality: str, procedure_code: str = "") -> str:
    """The station (AE title) for a step that arrives without one (ris.models.StationRule):
    the first enabled rule, lowest priority number first, whose modality equals the step's and
    whose procedure code is empty or equals the exam's. '' when no rule matches: the step waits
    on the worklist without a station until a scheduler assigns one in the UI."""
    rule = (
        StationRule.objects.filter(enabled=True, modality=modality)
        .filter(Q(procedure_code="") | Q(procedure_code=procedure_code))
        .order_by("priority", "id")
        .first()
    )
    return rule.station_ae_title if rule else ""


def find_order(
    *, placer_order_number: str = "", placer_issuer: str = "", filler_order_number: str = "", filler_issuer: str = ""
) -> ImagingOrder | None:
    """The order a HIS message names: by filler number (ours) first, then by placer number.
    An issuer that does not match exactly is forgiven when the number alone is unambiguous."""
    for kind, number, issuer in (
        ("filler", filler_order_number, filler_issuer),
        ("placer", placer_order_number, placer_issuer),
    ):
        if not number:
            continue
        candidates = list(ImagingOrder.objects.filter(**{f"{kind}_order_number": number})[:10])
        exact = [o for o in candidates if getattr(o, f"{kind}_issuer") == issuer]
        if exact:
            return exact[0]
        if len(candidates) == 1:
            return candidates[0]
    return None


def find_exam_of_order(
    order: ImagingOrder, *, accession_number: str = "", requested_procedure_id: str = ""
) -> RequestedProcedure | None:
    """One exam of an order: by accession number, else Requested Procedure ID, else the
    order's only exam."""
    exams = order.requested_procedures.all()
    if accession_number:
        return exams.filter(accession_number=accession_number).first()
    if requested_procedure_id:
        return exams.filter(requested_procedure_id=requested_procedure_id).first()
    only = list(exams[:2])
    return only[0] if len(only) == 1 else None


# Order fields the HIS may change on an existing order (XO); numbers and patient are not among them.
ORDER_CHANGEABLE_FIELDS = frozenset(
    {
        "ordering_physician",
        "referring_physician",
        "reason",
        "priority",
        "admission_id",
        "patient_location",
        "medical_alerts",
        "allergies",
        "patient_state",
        "pregnancy_status",
        "transport_arrangements",
    }
)


@dataclass
class ExamChange:
    """What an order change (HL7 XO) asks for; None = keep."""

    start: dt.datetime | None = None
    modality: str | None = None
    station_ae_title: str | None = None
    station_name: str | None = None
    location: str | None = None
    procedure_code: str | None = None
    procedure_code_scheme: str | None = None
    procedure_description: str | None = None
    protocol_codes: list[dict[str, str]] | None = None
    order_fields: dict[str, Any] = field(default_factory=dict)


@_atomic
def change_exam(actor: Actor, exam: RequestedProcedure, change: ExamChange) -> RequestedProcedure:
    """Change an exam that has not started (HL7 XO, RAD-13 style): time, modality, station,
    procedure and order details. Its open steps take the change and are announced to the
    worklist; an ORDERED exam whose steps now all have a start is SCHEDULED. A new modality
    without an explicit station re-runs the station rules. Refused once the modality started
    (IN_PROGRESS and later) or after cancel/discontinue."""
    _require_permission(actor, "ris.schedule_exam", "change exams")
    exam = _lock_exam(exam)
    if exam.status not in (E.ORDERED, E.SCHEDULED):
        if exam.status == E.IN_PROGRESS:
            raise WorkflowError("in_progress", "exam is in progress at the modality and cannot be changed")
        raise WorkflowError("illegal_transition", f"an exam in status {exam.status} can no longer be changed")
    changed = _apply_order_fields(exam.order, change.order_fields)
    for name in ("modality", "procedure_code", "procedure_code_scheme", "procedure_description"):
        value = getattr(change, name)
        if value is not None and getattr(exam, name) != value:
            setattr(exam, name, value)
            changed.append(name)
    exam.save()
    station = change.station_ae_title
    if station is None and "modality" in changed:
        station = station_for(exam.modality, exam.procedure_code)
    steps = list(exam.scheduled_steps.filter(status__in=OPEN_STEP_STATUSES))
    step_values = {
        "start": change.start,
        "modality": change.modality,
        "station_ae_title": station,
        "station_name": change.station_name,
        "location": change.location,
        "description": change.procedure_description,
        "protocol_codes": change.protocol_codes,
    }
    for step in steps:
        for name, value in step_values.items():
            if value is not None and getattr(step, name) != value:
                setattr(step, name, value)
                changed.append(f"step.{name}")
        step.save()
    audit(actor, "exam.changed", exam=exam, changed=sorted(set(changed)), steps=[s.sps_id for s in steps])
    if exam.status == E.ORDERED and steps and all(s.start is not None for s in steps):
        _set_exam_status(exam, E.SCHEDULED, actor, "exam.scheduled", steps=[s.sps_id for s in steps])
    _announce(steps)
    return exam


def _apply_order_fields(order: ImagingOrder, values: dict[str, Any]) -> list[str]:
    unknown = set(values) - ORDER_CHANGEABLE_FIELDS
    if unknown:
        raise WorkflowError("invalid", f"order fields {sorted(unknown)} cannot be changed", field=sorted(unknown)[0])
    changed = [k for k, v in values.items() if getattr(order, k) != v]
    for name in changed:
        setattr(order, name, values[name])
    if changed:
        order.save()
    return [f"order.{name}" for name in changed]


@_atomic
def record_placer_status(actor: Actor, exam: RequestedProcedure, placer_status: str) -> None:
    """A status report from the order placer (HL7 SC with ORC-5 SC/IP/CM/HD...): audited, no
    status change, since the exam's progress is what the modality reports (MPPS), not the HIS."""
    audit(actor, "order.placer_status", exam=exam, placer_status=placer_status)
