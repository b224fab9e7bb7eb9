"""Move some of today's `seed_demo` exams along the workflow, for screenshots and demos.

Everything goes through ris.workflow as the system actor "demo": arrivals, MPPS start and
completion, acceptance for reading, preliminary and final reports. Also fills the procedure
catalogue from the demo procedures and gives the demo rooms opening hours when they have none.
"""

from __future__ import annotations

import datetime as dt

from django.contrib.auth import get_user_model
from django.db import transaction

from ris import workflow
from ris.management.commands.seed_demo import MODALITIES, PROCEDURES
from ris.models import ExamStatus, ProcedureType, RequestedProcedure
from worklist.models import Modality

DURATIONS = {"CT": 20, "MR": 40, "US": 20, "CR": 10}
FINDINGS = "Không thấy tổn thương khu trú. No focal lesion. Normal appearances for age."
IMPRESSION = "Bình thường. Normal study."


@transaction.atomic
def advance_demo() -> str:
    for modality, procedures in PROCEDURES.items():
        for code, description in procedures:
            ProcedureType.objects.get_or_create(
                code=code,
                scheme="LOCAL",
                defaults={"description": description, "modality": modality, "duration_minutes": DURATIONS[modality]},
            )
    for ae, *_rest in MODALITIES:
        Modality.objects.filter(ae_title=ae, opens_at=None).update(opens_at=dt.time(7, 0), closes_at=dt.time(19, 0))
    system = workflow.Actor("system", "demo")
    radiologist = get_user_model().objects.filter(groups__name="radiologist").first()
    exams = list(
        RequestedProcedure.objects.filter(status=ExamStatus.SCHEDULED).order_by("scheduled_steps__start").distinct()
    )
    moved = 0
    for n, exam in enumerate(exams[:14]):
        steps = list(exam.scheduled_steps.all())
        if n % 7 == 6:
            workflow.record_patient_arrived(_tech(), exam)
            continue
        performed = workflow.start_performed_step(
            workflow.Actor.for_ae(steps[0].station_ae_title or "CT1"),
            f"{workflow.new_uid()}",
            steps,
            modality=exam.modality,
        )
        moved += 1
        if n % 7 == 5:
            continue  # stays IN_PROGRESS
        workflow.complete_performed_step(workflow.Actor.for_ae(steps[0].station_ae_title or "CT1"), performed)
        if n % 7 == 4:
            continue  # COMPLETED, images awaited
        workflow.mark_ready_for_reading(system, exam)
        if radiologist is None or n % 7 in (2, 3):
            continue
        actor = workflow.Actor.for_user(radiologist)
        workflow.sign_report(actor, exam, findings=FINDINGS, impression=IMPRESSION, final=n % 7 != 1)
    return f"advanced {moved} demo exams"


def _tech() -> workflow.Actor:
    user = get_user_model().objects.filter(groups__name__in=["technologist", "admin"]).first()
    return workflow.Actor.for_user(user) if user else workflow.Actor("system", "demo")
