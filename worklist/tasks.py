"""Arrival tracking tasks (swf-spec §7): the completeness check of an exam after its MPPS
completed or its images arrived, and the periodic sweep that re-checks what a lost task or a
broker outage left behind and puts exams whose images stay missing on the QA list.

Every task is idempotent (the exam row is locked and its status decides, so a second run
changes nothing) and acknowledged late, so a worker killed mid-task makes the broker deliver
it again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import shared_task
from django.conf import settings

from ris import workflow
from ris.celery import app
from ris.models import ActorKind, ExamStatus, RequestedProcedure
from worklist import forward, mpps_forward

log = logging.getLogger(__name__)

# The worker imports this module at start (autodiscovery): from then on the outbox can deliver
# "pacs" rows (C-STORE forwarding to RIS_PACS) and "mpps" rows (MPPS to RIS_MPPS_FORWARD), and
# its sweep finds them.
forward.register()
mpps_forward.register()

ARRIVAL_TRACKING = workflow.Actor(ActorKind.SYSTEM, "arrival-tracking")
CHECK_COMPLETENESS = "worklist.tasks.check_completeness"
# A little after the quiet period ends, so the re-check does not land a hair before it.
RECHECK_MARGIN_SECONDS = 0.2


def schedule_completeness_check(exam_ids: Iterable[int | None], countdown: float = 0.0) -> None:
    """Ask a worker to check these exams. Never raises: a listener must answer its peer even
    when the broker is down, and the sweep finds the exams later."""
    for exam_id in {e for e in exam_ids if e is not None}:
        try:
            # The project's app explicitly: listener threads have no Celery 'current app'.
            app.send_task(
                CHECK_COMPLETENESS,
                args=[exam_id],
                countdown=countdown or None,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception:
            log.exception("could not queue the completeness check of exam %s; the sweep will", exam_id)


def schedule_check_after_arrival(exam_ids: Iterable[int | None]) -> None:
    """Images just arrived: nothing can be decided before the quiet period is over."""
    schedule_completeness_check(exam_ids, countdown=settings.RIS_ARRIVAL_QUIET_SECONDS + RECHECK_MARGIN_SECONDS)


def _settle(exam: RequestedProcedure) -> workflow.ArrivalDecision:
    decision = workflow.settle_exam_arrivals(ARRIVAL_TRACKING, exam)
    if decision.outcome == "waiting_quiet":
        schedule_completeness_check([exam.pk], countdown=decision.wait_seconds + RECHECK_MARGIN_SECONDS)
    return decision


@shared_task(name=CHECK_COMPLETENESS, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def check_completeness(exam_id: int) -> str:
    """READY_FOR_READING when the MPPS is COMPLETED, every listed instance arrived and the quiet
    period passed; otherwise re-check after the quiet period, or leave it to the next arrival."""
    exam = RequestedProcedure.objects.filter(pk=exam_id).first()
    if exam is None:
        return "not_found"
    decision = _settle(exam)
    log.info("exam %s: %s (missing %s)", exam_id, decision.outcome, decision.missing)
    return decision.outcome


@shared_task(name="worklist.tasks.sweep_arrivals", acks_late=True, ignore_result=True)
def sweep_arrivals() -> dict[str, int]:
    """Periodic (CELERY_BEAT_SCHEDULE "arrival-sweep"): settle every COMPLETED exam. Recovers
    checks lost with a broker or worker, and flags "images missing" once the timeout passed."""
    outcomes: dict[str, int] = {}
    for exam in RequestedProcedure.objects.filter(status=ExamStatus.COMPLETED).only("pk").iterator():
        outcome = _settle(exam).outcome
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes
