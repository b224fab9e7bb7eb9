"""Outbox delivery of ORU^R01 (and prebuilt ORM) over MLLP to a HIS, with a real Celery worker
subprocess on this run's broker and a HIS peer written here with plain sockets.

Every test signs in-process through ris.workflow (the commit queues the delivery task), then
watches what the HIS received and what the outbox row says.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.utils import timezone

from ris import outbox, workflow
from ris.models import OutboundMessage, OutboxStatus
from tests.conftest import _reset_publisher, database_url_of_test_db, publishing_to, running, send_task
from tests.test_reports_helpers import HISPeer, module_env, radiologist, ready_exam, wait_until, worker_argv

pytestmark = pytest.mark.live

FAST_RETRY = {
    "RIS_OUTBOX_RETRY_BASE_SECONDS": "0.2",
    "RIS_OUTBOX_RETRY_MAX_SECONDS": "1",
    "RIS_OUTBOX_MAX_ATTEMPTS": "8",
    "RIS_OUTBOX_ACK_TIMEOUT": "1",
}


@pytest.fixture(scope="module")
def outbox_env(his_peer, django_db_setup, django_db_blocker, tmp_path_factory) -> dict[str, str]:
    """Environment of this module's worker: the test database, a private queue, the HIS peer."""
    with django_db_blocker.unblock():
        url = database_url_of_test_db()
    tmp = tmp_path_factory.mktemp("outbox")
    return module_env(url, tmp, RIS_HIS_MLLP=his_peer.address, RIS_REPORT_OUTPUT="oru", TMP_DIR=str(tmp), **FAST_RETRY)


@pytest.fixture(scope="module")
def outbox_worker(outbox_env) -> Iterator[None]:
    """One Celery worker subprocess for the module (each test still starts from an empty database)."""
    with running(worker_argv("outbox"), outbox_env, Path(outbox_env["TMP_DIR"]) / "worker.log"):
        yield


@pytest.fixture
def his(his_peer, outbox_env, transactional_db, settings) -> HISPeer:
    """The HIS peer, up and accepting everything (tests change `his.answer`); signing in this
    process sends to it (the destinations are decided at sign-off)."""
    his_peer.answer = lambda _m, _n: "AA"
    with his_peer.lock:
        his_peer.received.clear()
        his_peer.accepted.clear()
    if his_peer.server is None:
        his_peer.up()
    settings.RIS_HIS_MLLP = his_peer.address
    settings.RIS_REPORT_OUTPUT = "oru"
    return his_peer


@pytest.fixture
def publisher(outbox_env):
    with publishing_to(outbox_env) as app:
        yield app


@pytest.fixture
def broker_down(publisher):
    """This process cannot reach any broker: sign-offs commit, their delivery tasks are lost."""
    publisher.conf.broker_url = "amqp://guest:guest@127.0.0.1:1//"  # nothing listens there
    _reset_publisher(publisher)
    return publisher


def sign(exam, final=True, findings="No acute abnormality.", **kw):
    return workflow.sign_report(radiologist(), exam, findings=findings, impression="Normal.", final=final, **kw)


def row_of(report) -> OutboundMessage:
    return OutboundMessage.objects.get(report=report, destination="oru")


def delivered(row: OutboundMessage) -> bool:
    row.refresh_from_db()
    return row.status == OutboxStatus.DELIVERED


def test_final_report_is_delivered_to_the_his_and_marked_delivered_on_aa(his, publisher, outbox_worker):
    report = sign(ready_exam())
    row = row_of(report)
    assert wait_until(lambda: delivered(row))
    assert his.received == [row.payload]
    assert his.received[0].split("\r")[0].split("|")[9] == row.message_control_id
    assert row.attempts == 1 and row.delivered_at is not None and row.last_error == ""


def test_his_answering_ae_parks_the_message_as_failed_with_the_reason(his, publisher, outbox_worker):
    his.answer = lambda _m, _n: "AE"
    row = row_of(sign(ready_exam()))
    assert wait_until(lambda: row.refresh_from_db() or row.status == OutboxStatus.FAILED)
    assert row.attempts == 1  # AE: resending the same message cannot help
    assert "AE" in row.last_error and "refused by test HIS" in row.last_error
    assert len(his.received) == 1


def test_his_answering_ar_is_retried_with_the_same_message_until_accepted(his, publisher, outbox_worker):
    his.answer = lambda _m, n: "AR" if n <= 2 else "AA"
    row = row_of(sign(ready_exam()))
    assert wait_until(lambda: delivered(row))
    assert row.attempts == 3
    assert len(set(his.received)) == 1 and len(his.received) == 3  # the very same message, resent


def test_garbage_and_silence_from_the_his_are_retried(his, publisher, outbox_worker):
    his.answer = lambda _m, n: {1: "garbage", 2: "silence"}.get(n, "AA")
    row = row_of(sign(ready_exam()))
    assert wait_until(lambda: delivered(row))
    assert row.attempts == 3
    assert his.accepted == [row.message_control_id]


def test_message_that_keeps_failing_is_parked_after_the_configured_attempts(his, publisher, outbox_worker):
    his.answer = lambda _m, _n: "AR"
    row = row_of(sign(ready_exam()))
    assert wait_until(lambda: row.refresh_from_db() or row.status == OutboxStatus.FAILED)
    assert row.attempts == int(FAST_RETRY["RIS_OUTBOX_MAX_ATTEMPTS"])
    assert "AR" in row.last_error


def test_operator_retry_of_a_parked_message_delivers_it(his, publisher, outbox_worker):
    his.answer = lambda _m, n: "AE" if n == 1 else "AA"
    row = row_of(sign(ready_exam()))
    assert wait_until(lambda: row.refresh_from_db() or row.status == OutboxStatus.FAILED)
    assert outbox.retry_failed([row]) == 1
    assert wait_until(lambda: delivered(row))
    assert his.accepted == [row.message_control_id]


def test_his_down_then_up_every_report_is_delivered_exactly_once(his, publisher, outbox_worker):
    his.down()
    rows = [row_of(sign(ready_exam())) for _ in range(4)]
    assert wait_until(lambda: all(r.refresh_from_db() or r.attempts >= 2 for r in rows))
    assert all(r.status == OutboxStatus.PENDING and "HIS" in r.last_error for r in rows)
    his.up()
    assert wait_until(lambda: all(delivered(r) for r in rows))
    assert sorted(his.accepted) == sorted(r.message_control_id for r in rows)
    assert len(his.received) == 4


def test_correction_never_overtakes_the_final(his, publisher, outbox_worker):
    # The HIS refuses the final for a while; the correction signed meanwhile must wait behind it.
    his.answer = lambda m, n: "AR" if n <= 3 else "AA"
    exam = ready_exam()
    final = row_of(sign(exam, findings="First reading."))
    correction = row_of(sign(exam, findings="Corrected reading.", amendment="correction"))
    assert wait_until(lambda: delivered(final) and delivered(correction))
    assert his.accepted == [final.message_control_id, correction.message_control_id]
    assert his.received_ids().index(correction.message_control_id) > 2  # not sent while the final was refused
    assert "|C|" in his.received[-1] and "Corrected reading." in his.received[-1]


def test_prebuilt_orm_rows_are_sent_as_written_in_order_with_the_report(his, publisher, outbox_worker):
    exam = ready_exam()
    control_id = f"S{uuid.uuid4().hex[:10]}"
    orm = (
        f"MSH|^~\\&|RIS|RAD|HIS||20260101000000||ORM^O01|{control_id}|P|2.3.1\r"
        f"PID|1||{exam.order.patient.patient_id}\rORC|SC|||CM\r"
    )
    from django.db import transaction

    with transaction.atomic():
        row = outbox.create_message(
            destination="orm", requested_procedure=exam, message_control_id=control_id, payload=orm
        )
        outbox.enqueue_on_commit([row])
    report_row = row_of(sign(exam))
    assert wait_until(lambda: delivered(row) and delivered(report_row))
    assert his.received[0] == orm
    assert his.accepted == [control_id, report_row.message_control_id]


def test_sweep_queues_rows_a_broker_outage_left_behind(his, outbox_env, broker_down, outbox_worker):
    row = row_of(sign(ready_exam()))  # the sign-off itself succeeds
    row.refresh_from_db()
    assert row.status == OutboxStatus.PENDING and row.attempts == 0
    send_task(outbox_env, outbox.SWEEP_TASK)
    assert wait_until(lambda: delivered(row))
    assert his.accepted == [row.message_control_id]


def own_env(outbox_env: dict[str, str], **changes: str) -> dict[str, str]:
    """The module's environment on a queue of its own, for a worker this test starts and stops."""
    return {**outbox_env, "RIS_CELERY_QUEUE": f"test-{uuid.uuid4().hex[:8]}", **changes}


def test_periodic_sweep_from_beat_delivers_without_any_queued_task(his, outbox_env, broker_down, tmp_path):
    row = row_of(sign(ready_exam()))
    env = own_env(outbox_env, RIS_OUTBOX_SWEEP_SECONDS="1")
    argv = worker_argv("beat", "--beat", "--schedule", str(tmp_path / "beat-schedule"))
    with running(argv, env, tmp_path / "worker-beat.log"):
        assert wait_until(lambda: delivered(row), timeout=40)
    assert his.accepted == [row.message_control_id]


def test_worker_killed_mid_delivery_the_message_is_delivered_after_restart(his, outbox_env, tmp_path):
    his.answer = lambda _m, n: "silence" if n == 1 else "AA"
    # The first attempt hangs on a silent HIS until the worker is killed; its claim lasts 2 x 5 + 2 s.
    env = own_env(outbox_env, RIS_OUTBOX_ACK_TIMEOUT="5", RIS_OUTBOX_SWEEP_SECONDS="1")
    with publishing_to(env), running(worker_argv("doomed"), env, tmp_path / "worker1.log") as worker:
        row = row_of(sign(ready_exam()))
        assert wait_until(lambda: len(his.received) == 1)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    row.refresh_from_db()
    assert row.status == OutboxStatus.PENDING and row.attempts == 1
    # A new worker with beat: once the dead worker's claim expires, the sweep queues the row again.
    argv = worker_argv("restarted", "--beat", "--schedule", str(tmp_path / "beat2"))
    with running(argv, env, tmp_path / "worker2.log"):
        assert wait_until(lambda: delivered(row), timeout=60)
    assert his.accepted == [row.message_control_id]


def test_when_the_his_is_back_waiting_messages_go_at_once_not_after_their_backoff(his, outbox_env, tmp_path):
    env = own_env(outbox_env, RIS_OUTBOX_RETRY_BASE_SECONDS="120", RIS_OUTBOX_RETRY_MAX_SECONDS="600")
    his.down()
    with publishing_to(env), running(worker_argv("patient"), env, tmp_path / "worker.log"):
        waiting = [row_of(sign(ready_exam())) for _ in range(3)]
        assert wait_until(lambda: all(r.refresh_from_db() or r.attempts == 1 for r in waiting))
        assert all(r.status == OutboxStatus.PENDING and r.next_attempt_at > timezone.now() for r in waiting)
        his.up()
        waiting[0].refresh_from_db()
        OutboundMessage.objects.filter(pk=waiting[0].pk).update(next_attempt_at=timezone.now())
        outbox.enqueue([waiting[0].pk])  # its retry comes first (e.g. an operator's sweep)
        assert wait_until(lambda: all(delivered(r) for r in waiting), timeout=20)  # not 120 s later
    assert sorted(his.accepted) == sorted(r.message_control_id for r in waiting)
