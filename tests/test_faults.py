"""Fault injection (issue 9): the real stack (runmllp, rundicom, a Celery worker with beat) under
a load of ORMs, MPPS + C-STORE and sign-offs, with one fault injected per test. Afterwards the
database and the peers must agree: every ACKed order exists exactly once, every message was
ACKed or refused, every report version reached the HIS exactly once and in order, every
completed exam is READY_FOR_READING and nothing is stuck.

`make faults` runs this module in full (FAULTS_FULL=1: more load) on PostgreSQL + RabbitMQ and
prints the table of faults and figures; `make test` runs it with a small load. The RabbitMQ and
PostgreSQL faults need those services (skipped, with the reason, on the embedded broker and
SQLite)."""

from __future__ import annotations

import os
import time

import pytest
from django.conf import settings as django_settings

from faults import verify
from faults.load import ModalityLoad, OrderSender, SignOffLoad, prepare_scan
from faults.stack import Stack, postgres_restart, rabbitmq_stopped
from ris import workflow
from tests.conftest import publishing_to
from tests.test_arrival_tracking import ct_file
from tests.test_mpps_scp import final, in_progress, order_exam, performed_series, register_station, step_item
from tests.test_reports_helpers import HISPeer, radiologist, ready_exam

pytestmark = [pytest.mark.live, pytest.mark.faults]

FULL = os.environ.get("FAULTS_FULL") == "1"
LOAD = {"orders": 300, "scans": 12, "signoffs": 15} if FULL else {"orders": 30, "scans": 3, "signoffs": 3}
IMAGES_PER_SCAN = 3
ON_RABBITMQ = os.environ.get("CELERY_BROKER_URL", "").startswith("amqp")
ON_POSTGRES = os.environ.get("DATABASE_URL", "").startswith("postgres")


@pytest.fixture(scope="module", autouse=True)
def fault_table():
    yield
    if verify.RESULTS:
        print("\n\nFaults injected and figures held\n\n" + verify.table(verify.RESULTS) + "\n")


class Scenario:
    def __init__(self, stack: Stack, his: HISPeer, tmp_path) -> None:
        self.stack, self.his = stack, his
        self.scans = [
            prepare_scan(
                tmp_path / "scans",
                exam,
                IMAGES_PER_SCAN,
                ct_file,
                in_progress([step_item(exam)]),
                final,
                performed_series,
            )
            for exam in (order_exam() for _ in range(LOAD["scans"]))
        ]
        self.ready = [ready_exam(images=1) for _ in range(LOAD["signoffs"])]

    def run(self, fault: str, inject) -> None:
        deadline = time.monotonic() + (240 if FULL else 120)
        rad = radiologist()

        def sign(exam, final_report: bool):
            text = "Final: no acute abnormality." if final_report else "Preliminary: no acute abnormality."
            return workflow.sign_report(rad, exam, findings=text, impression="Normal.", final=final_report)

        sender = OrderSender(self.stack.mllp_address, LOAD["orders"], deadline, pace=0.15 if not FULL else 0.02)
        modality = ModalityLoad(lambda: self.stack.dicom_port, self.scans, deadline)
        signer = SignOffLoad(sign, self.ready, deadline)
        for load in (sender, modality, signer):
            load.start()
        time.sleep(1.0)
        injected = inject(self, modality)
        for load in (sender, modality, signer):
            load.join()
        figures = verify.Figures(fault)
        verify.settle(lambda: _converged(), timeout=120 if FULL else 90)
        verify.orders_held(figures, sender)
        verify.exams_ready(figures, modality)
        verify.deliveries_held(figures, self.his)
        verify.nothing_stuck(figures)
        retries = sender.tally.retries + modality.tally.retries + signer.tally.retries
        figures.notes.append(f"{retries} peer retries during the fault")
        verify.RESULTS.append({"fault": fault, "injected": injected, "held": figures.held, "notes": figures.notes})
        assert not figures.failures, figures.failures


def _converged() -> bool:
    from ris.models import ExamStatus, OutboundMessage, OutboxStatus, RequestedProcedure

    return (
        not OutboundMessage.objects.exclude(status=OutboxStatus.DELIVERED).exists()
        and not RequestedProcedure.objects.filter(status__in=[ExamStatus.COMPLETED, ExamStatus.IN_PROGRESS]).exists()
    )


@pytest.fixture
def scenario(ris_env, tmp_path, settings):
    his = HISPeer("AA").up()
    ris_env.update(
        {
            "RIS_HIS_MLLP": his.address,
            "RIS_REPORT_OUTPUT": "oru",
            "RIS_OUTBOX_RETRY_BASE_SECONDS": "0.2",
            "RIS_OUTBOX_RETRY_MAX_SECONDS": "1",
            "RIS_OUTBOX_MAX_ATTEMPTS": "1000",
            "RIS_OUTBOX_ACK_TIMEOUT": "2",
            "RIS_OUTBOX_SWEEP_SECONDS": "1",
            "RIS_ARRIVAL_SWEEP_SECONDS": "1",
            "RIS_ARRIVAL_MISSING_TIMEOUT_SECONDS": "600",
        }
    )
    settings.RIS_HIS_MLLP, settings.RIS_REPORT_OUTPUT = his.address, "oru"
    register_station("CT1")
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(ris_env, logs)
    try:
        with publishing_to(ris_env):
            stack.start()
            yield Scenario(stack, his, tmp_path)
    finally:
        stack.stop()
        his.down()
        assert django_settings.RIS_HIS_MLLP  # the settings fixture restores the rest


# --- the faults -------------------------------------------------------------------------------


def test_worker_sigkilled_mid_task_loses_nothing(scenario):
    def inject(s: Scenario, _modality) -> str:
        s.stack.worker.kill()
        time.sleep(3)
        s.stack.worker.start()
        return "worker SIGKILL, restarted after 3 s"

    scenario.run("Celery worker SIGKILL", inject)


def test_his_peer_down_then_back_loses_nothing(scenario):
    def inject(s: Scenario, _modality) -> str:
        s.his.down()
        time.sleep(5)
        s.his.up()
        return "HIS MLLP port closed 5 s"

    scenario.run("HIS peer down/up", inject)


def test_dicom_scp_killed_mid_association_loses_nothing(scenario):
    def inject(s: Scenario, modality: ModalityLoad) -> str:
        in_association = modality.in_association.wait(30)
        s.stack.dicom.kill()
        time.sleep(2)
        s.stack.dicom.start()
        return "rundicom SIGKILL " + ("mid-association" if in_association else "(between associations)")

    scenario.run("DICOM SCP killed", inject)


def test_mllp_listener_killed_under_load_loses_nothing(scenario):
    def inject(s: Scenario, _modality) -> str:
        s.stack.mllp.kill()
        time.sleep(2)
        s.stack.mllp.start()
        return "runmllp SIGKILL, restarted after 2 s"

    scenario.run("MLLP listener killed", inject)


@pytest.mark.skipif(
    not ON_RABBITMQ, reason="needs RabbitMQ (CELERY_BROKER_URL=amqp://...); the embedded broker has no server to stop"
)
def test_rabbitmq_stopped_and_started_loses_nothing(scenario):
    def inject(_s: Scenario, _modality) -> str:
        with rabbitmq_stopped(5):
            pass
        return "rabbitmqctl stop_app, start_app after 5 s"

    scenario.run("RabbitMQ stop/start", inject)


@pytest.mark.skipif(
    not ON_POSTGRES, reason="needs PostgreSQL (DATABASE_URL=postgres://...); SQLite has no server to restart"
)
def test_postgresql_restarted_loses_nothing(scenario):
    def inject(_s: Scenario, _modality) -> str:
        postgres_restart()
        return "pg_ctlcluster restart"

    scenario.run("PostgreSQL restart", inject)
