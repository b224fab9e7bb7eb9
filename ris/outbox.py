"""The outbox: reliable delivery of every outbound message (architecture.md, "Outbox for everything").

A change that must be told to a peer writes an OutboundMessage row in its own transaction
(a signed report, an order status change). After commit a Celery task delivers the row by its
destination, through a sender that the owning app registers:

- "oru" and "orm": HL7 v2 over MLLP to RIS_HIS_MLLP, waiting for the ACK (AA delivered, AR retried,
  AE parked);
- "fhir": a FHIR transaction Bundle POSTed to RIS_FHIR_BASE_URL.

Guarantees:
- at least once: a row stays PENDING until its peer acknowledged it; a periodic sweep re-queues rows
  that a broker or worker outage left behind, and rows whose claim expired (worker died mid-send);
- idempotent on the receiver: the payload and its message control id / resource identifiers are
  fixed when the row is written, so a re-delivery is the very same message;
- in order per exam and channel: a row is sent only when every earlier row of its exam on the same
  channel (MLLP or FHIR) is DELIVERED, so a correction never overtakes the final;
- bounded exponential backoff (RIS_OUTBOX_RETRY_BASE_SECONDS doubling up to
  RIS_OUTBOX_RETRY_MAX_SECONDS); after RIS_OUTBOX_MAX_ATTEMPTS, or at once for an error the peer
  says resending will not fix, the row is parked as FAILED until an operator retries it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from ris.models import OutboundMessage, OutboxStatus

log = logging.getLogger(__name__)

DELIVER_TASK = "ris.outbox.deliver"
SWEEP_TASK = "ris.outbox.sweep"

# Destinations that share one peer connection keep their order together.
CHANNELS: dict[str, str] = {"oru": "mllp", "orm": "mllp", "fhir": "fhir"}
# A due row may be claimed this early, so a retry task that arrives a little before its
# next_attempt_at (countdown vs. clock) is not turned away.
DUE_TOLERANCE = dt.timedelta(seconds=1)
SWEEP_BATCH = 1000


class DeliveryError(Exception):
    """A delivery that did not succeed. `retry` False parks the row at once (the peer said the
    message itself is wrong, e.g. HL7 AE or FHIR 4xx); True retries it with backoff."""

    def __init__(self, reason: str, *, retry: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


Sender = Callable[[OutboundMessage], None]
Renderer = Callable[[OutboundMessage], str]
SENDERS: dict[str, Sender] = {}
RENDERERS: dict[str, Renderer] = {}


def register_sender(destination: str, sender: Sender) -> None:
    """The function that delivers rows of this destination; raises DeliveryError on failure."""
    SENDERS[destination] = sender


def register_renderer(destination: str, renderer: Renderer) -> None:
    """The function that turns a new row (report, exam, control id set) into its payload."""
    RENDERERS[destination] = renderer


# --- Writing rows ------------------------------------------------------------------------


def create_message(**fields) -> OutboundMessage:
    """Write one outbox row in the caller's transaction, with its payload rendered now when the
    destination has a renderer and no payload was given (so every re-delivery is identical)."""
    message = OutboundMessage(**fields)
    if not message.payload and message.destination in RENDERERS:
        message.payload = RENDERERS[message.destination](message)
    message.save()
    return message


def enqueue_on_commit(messages: Iterable[OutboundMessage]) -> None:
    """Queue delivery of these rows once the current transaction commits. A broker that is
    down loses nothing: the rows stay PENDING and the sweep queues them later."""
    ids = [m.pk for m in messages]
    if ids:
        transaction.on_commit(lambda: enqueue(ids))


def enqueue(ids: Iterable[int], countdown: float | None = None) -> None:
    from ris.celery import app

    for message_id in ids:
        try:
            app.send_task(
                DELIVER_TASK,
                args=[message_id],
                countdown=countdown,
                queue=app.conf.task_default_queue,
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5},
            )
        except Exception as exc:  # broker down: the sweep will find the row
            log.warning("outbox: could not queue message %s (%s); the sweep will retry", message_id, exc)


# --- Delivering one row ----------------------------------------------------------------


def channel_destinations(destination: str) -> list[str]:
    channel = CHANNELS.get(destination, destination)
    return [d for d, c in CHANNELS.items() if c == channel] or [destination]


def earlier_undelivered(message: OutboundMessage):
    """Rows that must be delivered before this one: same exam, same channel, lower id."""
    if message.requested_procedure_id is None:
        return OutboundMessage.objects.none()
    return OutboundMessage.objects.filter(
        requested_procedure_id=message.requested_procedure_id,
        destination__in=channel_destinations(message.destination),
        id__lt=message.id,
    ).exclude(status=OutboxStatus.DELIVERED)


def unclaimed(now: dt.datetime) -> Q:
    """Rows no live worker is sending (never claimed, or the claim of a dead worker expired)."""
    return Q(claimed_until__isnull=True) | Q(claimed_until__lte=now)


def claim_lease(destination: str) -> dt.timedelta:
    """How long a claimed row is left alone: longer than its send may take (connect + answer)."""
    timeout = settings.RIS_FHIR_TIMEOUT if CHANNELS.get(destination) == "fhir" else settings.RIS_OUTBOX_ACK_TIMEOUT
    return dt.timedelta(seconds=2 * timeout + 2)


def claim(message_id: int) -> OutboundMessage | None:
    """Take the row for one attempt, or None when it is not ours to send now (delivered,
    parked, claimed by another worker, waiting for its backoff, or behind an earlier row).
    The claim is one conditional UPDATE, so two tasks for one row never both send it."""
    message = OutboundMessage.objects.filter(pk=message_id).first()
    if message is None or message.status != OutboxStatus.PENDING or earlier_undelivered(message).exists():
        return None
    now = timezone.now()
    claimed = (
        OutboundMessage.objects.filter(pk=message_id, status=OutboxStatus.PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now + DUE_TOLERANCE))
        .filter(unclaimed(now))
        .update(claimed_until=now + claim_lease(message.destination), attempts=F("attempts") + 1)
    )
    if not claimed:
        return None
    message.refresh_from_db()
    return message


def backoff(attempts: int) -> float:
    """Seconds before attempt attempts+1: base * 2^(attempts-1), at most the configured maximum."""
    base, ceiling = settings.RIS_OUTBOX_RETRY_BASE_SECONDS, settings.RIS_OUTBOX_RETRY_MAX_SECONDS
    return min(ceiling, base * 2 ** max(0, attempts - 1))


def record_delivered(message: OutboundMessage) -> None:
    OutboundMessage.objects.filter(pk=message.pk).update(
        status=OutboxStatus.DELIVERED,
        delivered_at=timezone.now(),
        next_attempt_at=None,
        claimed_until=None,
        last_error="",
    )


def record_failure(message: OutboundMessage, error: DeliveryError) -> float | None:
    """Keep the reason; schedule the next attempt (returns its delay) or park the row."""
    reason = f"attempt {message.attempts}: {error.reason}"[:2000]
    if not error.retry or message.attempts >= settings.RIS_OUTBOX_MAX_ATTEMPTS:
        OutboundMessage.objects.filter(pk=message.pk).update(
            status=OutboxStatus.FAILED, next_attempt_at=None, claimed_until=None, last_error=reason
        )
        log.error("outbox: %s %s parked as FAILED: %s", message.destination, message.message_control_id, reason)
        return None
    delay = backoff(message.attempts)
    OutboundMessage.objects.filter(pk=message.pk).update(
        next_attempt_at=timezone.now() + dt.timedelta(seconds=delay), claimed_until=None, last_error=reason
    )
    log.warning("outbox: %s %s retry in %.1f s: %s", message.destination, message.message_control_id, delay, reason)
    return delay


def next_in_line(message: OutboundMessage) -> list[int]:
    """The row that was waiting behind this one on its exam and channel, if any."""
    if message.requested_procedure_id is None:
        return []
    following = (
        OutboundMessage.objects.filter(
            requested_procedure_id=message.requested_procedure_id,
            destination__in=channel_destinations(message.destination),
            id__gt=message.id,
            status=OutboxStatus.PENDING,
        )
        .order_by("id")
        .values_list("id", flat=True)[:1]
    )
    return list(following)


def deliver_message(message_id: int) -> str:
    """One delivery attempt of one row; returns what happened (for logs and tests)."""
    message = claim(message_id)
    if message is None:
        return "skipped"
    sender = SENDERS.get(message.destination)
    try:
        if sender is None:
            raise DeliveryError(f"no sender for destination {message.destination!r}", retry=False)
        sender(message)
    except DeliveryError as exc:
        delay = record_failure(message, exc)
        if delay is not None:
            enqueue([message.pk], countdown=delay)
        return "failed" if delay is None else "retrying"
    except Exception as exc:  # a bug or an unexpected peer: keep the row, retry with backoff
        log.exception("outbox: unexpected error delivering %s", message.message_control_id)
        delay = record_failure(message, DeliveryError(f"{type(exc).__name__}: {exc}"))
        if delay is not None:
            enqueue([message.pk], countdown=delay)
        return "failed" if delay is None else "retrying"
    record_delivered(message)
    enqueue(next_in_line(message))
    if message.attempts > 1 or message.last_error:
        resume_channel(message.destination)
    return "delivered"


@shared_task(name=DELIVER_TASK, acks_late=True, ignore_result=True)
def deliver(message_id: int) -> str:
    return deliver_message(message_id)


# --- Sweep and operator retry ----------------------------------------------------------


def resume_channel(destination: str) -> None:
    """The peer took a message after failures: rows of the same channel waiting for their backoff
    are due now, so an outage ends for every row at once, not up to a maximum backoff later."""
    now = timezone.now()
    resumed = (
        OutboundMessage.objects.filter(
            status=OutboxStatus.PENDING, destination__in=channel_destinations(destination), next_attempt_at__gt=now
        )
        .filter(unclaimed(now))
        .update(next_attempt_at=now)
    )
    if resumed:
        log.info("outbox: %s is back, %d waiting message(s) resumed", CHANNELS.get(destination, destination), resumed)
        enqueue(due_heads(channel_destinations(destination)))


def due_heads(only: list[str] | None = None) -> list[int]:
    """PENDING rows whose time has come and that no earlier row of their exam holds back:
    the rows an outage may have left without a queued task."""
    now = timezone.now()
    heads: list[int] = []
    for channel in sorted(set(CHANNELS.values())):
        destinations = [d for d, c in CHANNELS.items() if c == channel]
        if only is not None and not set(destinations) & set(only):
            continue
        blocked = Exists(
            OutboundMessage.objects.filter(
                requested_procedure_id=OuterRef("requested_procedure_id"),
                destination__in=destinations,
                id__lt=OuterRef("id"),
            ).exclude(status=OutboxStatus.DELIVERED)
        )
        rows = (
            OutboundMessage.objects.filter(status=OutboxStatus.PENDING, destination__in=destinations)
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .filter(unclaimed(now))
            .filter(Q(requested_procedure__isnull=True) | ~blocked)
            .order_by("id")
            .values_list("id", flat=True)[:SWEEP_BATCH]
        )
        heads.extend(rows)
    return heads


@shared_task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> int:
    """Periodic (CELERY_BEAT_SCHEDULE "outbox-sweep"): re-queue due rows; returns how many."""
    heads = due_heads()
    enqueue(heads)
    return len(heads)


def retry_failed(messages: Iterable[OutboundMessage], actor=None) -> int:
    """An operator's retry of parked rows: back to PENDING with a fresh attempt count, queued
    on commit, and audited. Delivered and pending rows are left as they are."""
    from ris.workflow import SYSTEM, audit

    ids = [m.pk for m in messages]
    with transaction.atomic():
        rows = list(OutboundMessage.objects.select_for_update().filter(pk__in=ids, status=OutboxStatus.FAILED))
        OutboundMessage.objects.filter(pk__in=[r.pk for r in rows]).update(
            status=OutboxStatus.PENDING, attempts=0, next_attempt_at=None, claimed_until=None
        )
        for row in rows:
            audit(
                actor or SYSTEM,
                "outbox.retried",
                exam=row.requested_procedure,
                destination=row.destination,
                message_control_id=row.message_control_id,
                last_error=row.last_error,
            )
        enqueue_on_commit(rows)
    return len(rows)
