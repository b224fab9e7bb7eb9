"""Outbox rules that need no peer: backoff bounds, order per exam and channel, the sweep's choice
of rows, and the operator's `manage.py outbox` command (tasks go to this test's private queue)."""

import datetime as dt
import io

import pytest
from django.core.management import call_command
from django.utils import timezone

from ris import outbox
from ris.models import AuditEvent, OutboundMessage, OutboxStatus
from tests.test_reports_helpers import ready_exam


@pytest.fixture
def rows(transactional_db, task_publisher):
    """Two exams; exam A has an ORU, an ORM and a FHIR row, exam B one ORU row."""
    a, b = ready_exam(), ready_exam()
    make = outbox.create_message
    return {
        "a_oru": make(destination="oru", requested_procedure=a, message_control_id="A1", payload="MSH|x"),
        "a_orm": make(destination="orm", requested_procedure=a, message_control_id="A2", payload="MSH|y"),
        "a_fhir": make(destination="fhir", requested_procedure=a, message_control_id="A3", payload="{}"),
        "b_oru": make(destination="oru", requested_procedure=b, message_control_id="B1", payload="MSH|z"),
    }


def test_backoff_doubles_from_the_base_and_stops_at_the_maximum(settings):
    settings.RIS_OUTBOX_RETRY_BASE_SECONDS = 5
    settings.RIS_OUTBOX_RETRY_MAX_SECONDS = 60
    assert [outbox.backoff(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_a_row_waits_behind_an_earlier_undelivered_row_of_its_exam_on_the_same_channel(rows):
    assert outbox.claim(rows["a_orm"].pk) is None  # the ORU before it on MLLP is not delivered
    assert outbox.claim(rows["a_fhir"].pk) is not None  # FHIR is another channel
    assert outbox.claim(rows["b_oru"].pk) is not None  # another exam


def test_a_parked_row_still_holds_back_the_rows_behind_it(rows):
    OutboundMessage.objects.filter(pk=rows["a_oru"].pk).update(status=OutboxStatus.FAILED)
    assert outbox.claim(rows["a_orm"].pk) is None


def test_a_claimed_row_cannot_be_claimed_again_until_its_lease_ends(rows):
    assert outbox.claim(rows["b_oru"].pk) is not None
    assert outbox.claim(rows["b_oru"].pk) is None


def test_sweep_picks_the_due_heads_only(rows):
    later = timezone.now() + dt.timedelta(minutes=5)
    OutboundMessage.objects.filter(pk=rows["b_oru"].pk).update(next_attempt_at=later)  # waiting for its backoff
    assert sorted(outbox.due_heads()) == sorted([rows["a_oru"].pk, rows["a_fhir"].pk])


def test_failed_delivery_is_parked_after_max_attempts(rows, settings):
    settings.RIS_OUTBOX_MAX_ATTEMPTS = 2
    row = rows["b_oru"]
    row.attempts = 2
    assert outbox.record_failure(row, outbox.DeliveryError("HIS answered AR")) is None
    row.refresh_from_db()
    assert row.status == OutboxStatus.FAILED and "AR" in row.last_error


def test_outbox_command_lists_and_retries_parked_rows_with_an_audit_entry(rows):
    OutboundMessage.objects.filter(pk=rows["b_oru"].pk).update(status=OutboxStatus.FAILED, last_error="AE: bad PID")
    listing = io.StringIO()
    call_command("outbox", "list", stdout=listing)
    assert "FAILED" in listing.getvalue() and "AE: bad PID" in listing.getvalue()
    out = io.StringIO()
    call_command("outbox", "retry", "--failed", stdout=out)
    assert "1 message(s) queued again" in out.getvalue()
    row = OutboundMessage.objects.get(pk=rows["b_oru"].pk)
    assert row.status == OutboxStatus.PENDING and row.attempts == 0
    assert AuditEvent.objects.filter(action="outbox.retried", detail__message_control_id="B1").exists()
