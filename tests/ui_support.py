"""Builders for the web UI tests (issue 7): rooms, catalogue, patients and exams made through
the workflow core, exactly as HL7 or the UI would make them."""

from __future__ import annotations

import datetime as dt

from ris import workflow
from ris.models import Patient, ProcedureType, RequestedProcedure
from ris.timeutil import site_zone
from worklist.models import Modality

SYSTEM = workflow.Actor("system", "test")


def make_room(ae_title: str = "CT1", modality: str = "CT", opens=dt.time(7, 0), closes=dt.time(19, 0)) -> Modality:
    return Modality.objects.create(
        ae_title=ae_title,
        modality=modality,
        station_name=f"{ae_title}_ST",
        location=f"Room {ae_title}",
        opens_at=opens,
        closes_at=closes,
    )


def make_procedure(
    code: str = "CTHEAD", modality: str = "CT", minutes: int = 20, description: str = "CT head"
) -> ProcedureType:
    return ProcedureType.objects.create(code=code, description=description, modality=modality, duration_minutes=minutes)


def make_patient(patient_id: str = "P1", family: str = "Nguyễn", middle: str = "Thị", given: str = "Đào") -> Patient:
    return workflow.register_patient(
        SYSTEM, patient_id, "HOSP", workflow.Demographics(family_name=family, middle_name=middle, given_name=given)
    )


def make_exam(
    patient: Patient | None = None,
    *,
    code: str = "CTHEAD",
    modality: str = "CT",
    start: dt.datetime | None = None,
    station: str = "",
    priority: str = "ROUTINE",
) -> RequestedProcedure:
    patient = patient or make_patient()
    request = workflow.OrderRequest(
        priority=priority,
        procedures=[
            workflow.ProcedureRequest(
                modality=modality,
                procedure_code=code,
                procedure_description=f"{modality} {code}",
                steps=[workflow.StepRequest(modality=modality, start=start, station_ae_title=station)],
            )
        ],
    )
    order = workflow.place_order(SYSTEM, patient, request)
    return order.requested_procedures.get()


def local(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=site_zone())


def tomorrow() -> dt.date:
    from django.utils import timezone

    return timezone.now().astimezone(site_zone()).date() + dt.timedelta(days=1)


def perform(exam: RequestedProcedure, ae_title: str = "CT1", complete: bool = True):
    """MPPS IN PROGRESS (then COMPLETED) for the exam's steps, as a modality would report it."""
    actor = workflow.Actor.for_ae(ae_title)
    performed = workflow.start_performed_step(actor, workflow.new_uid(), list(exam.scheduled_steps.all()))
    if complete:
        workflow.complete_performed_step(actor, performed)
    return performed


def ready_for_reading(exam: RequestedProcedure) -> RequestedProcedure:
    perform(exam)
    return workflow.mark_ready_for_reading(SYSTEM, exam)
