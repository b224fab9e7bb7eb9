"""Arrival tracking tasks (swf-spec §7): the completeness check of an exam after its MPPS
completed or its images arrived, the matching of studies that arrived before their order, and
the periodic sweep that re-checks what a lost task or a broker outage left behind and puts exams
whose images stay missing on the QA list.

An exam has at most one check queued (its due time is on the exam row); the checks travel on a
queue of their own, so they never wait behind outbox deliveries. Every task is idempotent (a
decision is recorded under the exam's row lock, where its status decides, so a second run
changes nothing) and acknowledged late, so a worker killed mid-task makes the broker deliver
it again.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from functools import partial

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ris import workflow
from ris.celery import app
from ris.models import ActorKind, ExamStatus, RequestedProcedure
from worklist import arrival, forward, mpps_forward

log = logging.getLogger(__name__)

# The worker imports this module at start (autodiscovery): from then on the outbox can deliver
# "pacs" rows (C-STORE forwarding to RIS_PACS) and "mpps" rows (MPPS to RIS_MPPS_FORWARD), and
# its sweep finds them.
forward.register()
mpps_forward.register()

ARRIVAL_TRACKING = workflow.Actor(ActorKind.SYSTEM, "arrival-tracking")
CHECK_COMPLETENESS = "worklist.tasks.check_completeness"
MATCH_STUDIES = arrival.MATCH_STUDIES
# Studies matched per run: the sweep takes the rest on its next round.
MATCH_BATCH = 500
# A little after the quiet period ends, so the re-check does not land a hair before it (one that
# does just asks again). Due times count from the last arrival, not from the end of a check.
RECHECK_MARGIN_SECONDS = 0.05
# A queued check whose due time is this far past is presumed lost (broker restart): a new request
# queues another one rather than waiting for the sweep.
LOST_CHECK_SECONDS = 30.0


def arrival_queue() -> str:
    """The completeness checks' own queue (settings.CELERY_TASK_QUEUES), named after the default
    queue at send time (tests point the app at a queue of their own)."""
    return app.conf.task_default_queue + settings.RIS_ARRIVAL_QUEUE_SUFFIX


def _join_or_claim(exam_id: int, due: dt.datetime) -> bool:
    """One pending check per exam: True when this request must queue a task (no check is queued
    due at or before `due`, or the queued one looks lost). Only COMPLETED exams are checked:
    images for an exam still IN_PROGRESS wait for its MPPS, whose completion queues the check."""
    pending = Q(arrival_check_due_at__isnull=True) | Q(arrival_check_due_at__gt=due)
    pending |= Q(arrival_check_due_at__lt=due - dt.timedelta(seconds=LOST_CHECK_SECONDS))
    claimed = RequestedProcedure.objects.filter(pending, pk=exam_id, status=ExamStatus.COMPLETED)
    return bool(claimed.update(arrival_check_due_at=due))


def _send_check(exam_id: int, due: dt.datetime) -> None:
    try:
        # The project's app explicitly: listener threads have no Celery 'current app'.
        app.send_task(
            CHECK_COMPLETENESS,
            args=[exam_id, due.isoformat()],
            eta=due if due > timezone.now() else None,
            queue=arrival_queue(),
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception:
        log.exception("could not queue the completeness check of exam %s; the sweep will", exam_id)
        RequestedProcedure.objects.filter(pk=exam_id, arrival_check_due_at=due).update(arrival_check_due_at=None)


def schedule_completeness_check(
    exam_ids: Iterable[int | None], countdown: float = 0.0, *, due: dt.datetime | None = None
) -> None:
    """Ask a worker to check these exams in `countdown` seconds (or at `due`); an exam with a
    check already queued for then or earlier gets no second one. Never raises: a listener must
    answer its peer even when the database or broker is down, and the sweep finds the exams later."""
    due = due or timezone.now() + dt.timedelta(seconds=countdown)
    for exam_id in sorted({e for e in exam_ids if e is not None}):
        try:
            if _join_or_claim(exam_id, due):
                # After the caller's commit (at once outside a transaction): the task must find the claim.
                transaction.on_commit(partial(_send_check, exam_id, due))
        except Exception:
            log.exception("could not ask for the completeness check of exam %s; the sweep will", exam_id)


def on_completeness_check_needed(sender, exam_ids: Iterable[int], **_kwargs) -> None:
    """ris.workflow.completeness_check_needed (worklist.apps): check now, quiet period permitting."""
    schedule_completeness_check(exam_ids)


def schedule_check_after_arrival(exam_ids: Iterable[int | None]) -> None:
    """Images just arrived: nothing can be decided before the quiet period is over."""
    schedule_completeness_check(exam_ids, countdown=settings.RIS_ARRIVAL_QUIET_SECONDS + RECHECK_MARGIN_SECONDS)


def _settle(exam: RequestedProcedure) -> workflow.ArrivalDecision:
    now = timezone.now()
    decision = workflow.settle_exam_arrivals(ARRIVAL_TRACKING, exam, now=now)
    if decision.outcome == "waiting_quiet":
        # From the moment the check read the clock, not from its end: under load a check takes a while.
        wait = dt.timedelta(seconds=decision.wait_seconds + RECHECK_MARGIN_SECONDS)
        schedule_completeness_check([exam.pk], due=now + wait)
    return decision


@shared_task(name=CHECK_COMPLETENESS, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def check_completeness(exam_id: int, due: str | None = None) -> str:
    """READY_FOR_READING when the MPPS is COMPLETED, every listed instance arrived and the quiet
    period passed; otherwise re-check after the quiet period, or leave it to the next arrival.
    Releases the exam's pending check first: whatever arrives from now on asks for a new one."""
    until = dt.datetime.fromisoformat(due) if due else timezone.now()
    RequestedProcedure.objects.filter(pk=exam_id, arrival_check_due_at__lte=until).update(arrival_check_due_at=None)
    exam = RequestedProcedure.objects.filter(pk=exam_id).first()
    if exam is None:
        return "not_found"
    decision = _settle(exam)
    log.info("exam %s: %s (missing %s)", exam_id, decision.outcome, decision.missing)
    return decision.outcome


@shared_task(name=MATCH_STUDIES, acks_late=True, ignore_result=True)
def match_unmatched_studies(exam_id: int | None = None) -> int:
    """Studies whose images (or IAN) came before their order, matched to the exam that now
    claims them (by Study Instance UID, then accession number); a COMPLETED exam is checked for
    completeness. With `exam_id`, the studies that exam claims (its order just arrived)."""
    exam = RequestedProcedure.objects.filter(pk=exam_id).first() if exam_id is not None else None
    if exam_id is not None and exam is None:
        return 0
    matched = []
    for study in workflow.unmatched_studies(exam).order_by("pk")[:MATCH_BATCH]:
        found = workflow.match_unmatched_study(ARRIVAL_TRACKING, study)
        if found is not None:
            matched.append(found.pk)
    schedule_completeness_check(matched)  # those arrivals are old: their quiet period is over
    return len(matched)


@shared_task(name="worklist.tasks.sweep_arrivals", acks_late=True, ignore_result=True)
def sweep_arrivals() -> dict[str, int]:
    """Periodic (CELERY_BEAT_SCHEDULE "arrival-sweep"): match studies that arrived before their
    order, then settle every COMPLETED exam. Recovers checks lost with a broker or worker, and
    flags "images missing" once the timeout passed."""
    outcomes: dict[str, int] = {"matched_studies": match_unmatched_studies()}
    for exam in RequestedProcedure.objects.filter(status=ExamStatus.COMPLETED).only("pk").iterator():
        outcome = _settle(exam).outcome
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes
