"""Helpers for the results-out tests (no tests here): exams brought to READY_FOR_READING through
the workflow, as the MPPS and arrival tracking would, and radiologists to sign them."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

from django.contrib.auth.models import Group, User
from django.utils import timezone

from ris import workflow
from ris.models import ArrivalSource, Instance, Patient, RequestedProcedure, Series, Study
from ris.roles import ensure_roles

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_numbers = itertools.count(1)


def user_with_role(username: str, role: str, **names) -> User:
    ensure_roles()
    user, _ = User.objects.get_or_create(username=username, defaults=names)
    user.groups.add(Group.objects.get(name=role))
    return User.objects.get(pk=user.pk)  # fresh permission cache


def radiologist(username: str = "rad01") -> workflow.Actor:
    return workflow.Actor.for_user(user_with_role(username, "radiologist", first_name="Eva", last_name="White"))


def ready_exam(
    *,
    family_name: str = "NGUYỄN",
    given_name: str = "Văn An",
    images: int = 2,
    accession: str = "",
) -> RequestedProcedure:
    """An exam ordered, performed (MPPS in progress, completed), its images arrived, and marked
    READY_FOR_READING, each step through ris.workflow."""
    n = next(_numbers)
    patient = workflow.register_patient(
        workflow.SYSTEM,
        f"P{n:05d}-{uuid.uuid4().hex[:6]}",
        "HOSP",
        workflow.Demographics(family_name=family_name, given_name=given_name, sex="M", birth_date=dt.date(1970, 1, 1)),
    )
    request = workflow.OrderRequest(
        placer_order_number=f"PL{uuid.uuid4().hex[:10]}",
        placer_issuer="EMR",
        filler_issuer="RIS",
        ordering_physician="TRAN^BINH",
        procedures=[
            workflow.ProcedureRequest(
                modality="CT",
                procedure_code="CTHEAD",
                procedure_code_scheme="LOCAL",
                procedure_description="CT head w/o contrast",
                accession_number=accession,
                steps=[workflow.StepRequest(modality="CT", start=timezone.now(), station_ae_title="CT1")],
            )
        ],
    )
    order = workflow.place_order(workflow.SYSTEM, patient, request)
    exam = order.requested_procedures.get()
    step = exam.scheduled_steps.get()
    ct = workflow.Actor.for_ae("CT1")
    performed = workflow.start_performed_step(ct, workflow.new_uid(), [step], modality="CT")
    series_uid = workflow.new_uid()
    expected = [workflow.ExpectedImage(series_uid, workflow.new_uid(), CT_IMAGE_STORAGE) for _ in range(images)]
    workflow.complete_performed_step(ct, performed, expected)
    if images:
        study = Study.objects.create(study_instance_uid=exam.study_instance_uid, requested_procedure=exam)
        series = Series.objects.create(series_instance_uid=series_uid, study=study, modality="CT", series_number=1)
        for number, image in enumerate(expected, start=1):
            Instance.objects.create(
                sop_instance_uid=image.sop_instance_uid,
                series=series,
                sop_class_uid=image.sop_class_uid,
                instance_number=number,
                source=ArrivalSource.STORE,
                source_ae_title="CT1",
            )
    exam.refresh_from_db()
    if exam.status != "READY_FOR_READING":  # arrival tracking may not have run: the core call it makes
        workflow.mark_ready_for_reading(workflow.SYSTEM, exam)
    return RequestedProcedure.objects.select_related("order__patient").get(pk=exam.pk)


def patient_of(exam: RequestedProcedure) -> Patient:
    return exam.order.patient
