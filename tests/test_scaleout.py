"""Scale-out (issue 8, contract "Processes"): the same stack as several copies of each process,
against one database and one broker: 2 MLLP listeners, 2 DICOM SCPs and 3 Celery workers,
each a separate process on its own port. Load is driven at every listener at once with
independent peers (plain-socket MLLP senders, pynetdicom MPPS SCU, DCMTK storescu), and the
outcome is read back from the database: nothing lost, nothing twice, one winner per race.

On SQLite every process shares one file and writers queue on its lock, which is not a
production topology (the contract asks PostgreSQL for several copies): the tests still run
there when the embedded broker is used, so the invariants are checked on both CI runs.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from hl7.models import InboundMessage
from ris.models import AuditEvent, ExamStatus, ImagingOrder, Instance, RequestedProcedure
from tests.conftest import database_url_of_test_db, free_port, manage, running
from tests.test_arrival_tracking import ct_file, ready_events, storescu, wait_until
from tests.test_mpps_scp import MppsScu, final, in_progress, performed_series, register_station, step_item

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

VT, FS_CR = b"\x0b", b"\x1c\x0d"
STATUS_SUCCESS = 0x0000


@dataclass
class Stack:
    mllp: list[int]
    dicom: list[int]
    worker_logs: list[Path]
    broker: str


def worker_argv(name: str) -> list[str]:
    return [
        sys.executable,
        *("-m", "celery", "-A", "ris", "worker", "--loglevel", "INFO", "--concurrency", "2"),
        *("--hostname", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle"),
    ]


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Stack]:
    """2 `runmllp`, 2 `rundicom` (one storage directory, as on a shared volume) and 3 workers,
    started once for the module; each test still starts from an empty database."""
    with django_db_blocker.unblock():
        url = database_url_of_test_db()
    tmp = tmp_path_factory.mktemp("scaleout")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIS_")}
    env.update(
        {
            "DATABASE_URL": url,
            "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL") or f"sqla+sqlite:///{tmp / 'broker.sqlite3'}",
            "RIS_CELERY_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
            "RIS_BIND": "127.0.0.1",
            "RIS_AE_TITLE": "RIS",
            "RIS_STORAGE_DIR": str(tmp / "dicom"),
            "RIS_ARRIVAL_QUIET_SECONDS": "1",
            "RIS_ARRIVAL_MISSING_TIMEOUT_SECONDS": "60",
            "PYTHONUNBUFFERED": "1",
        }
    )
    mllp, dicom = [free_port(), free_port()], [free_port(), free_port()]
    logs = [tmp / f"worker{i}.log" for i in range(3)]
    with ExitStack() as processes:
        for i, port in enumerate(mllp):
            copy = {**env, "RIS_MLLP_PORT": str(port), "RIS_DICOM_PORT": str(free_port())}
            processes.enter_context(running(manage("runmllp"), copy, tmp / f"mllp{i}.log", port))
        for i, port in enumerate(dicom):
            copy = {**env, "RIS_DICOM_PORT": str(port), "RIS_MLLP_PORT": str(free_port())}
            processes.enter_context(running(manage("rundicom"), copy, tmp / f"dicom{i}.log", port))
        for i, log in enumerate(logs):
            processes.enter_context(running(worker_argv(f"scale{i}"), env, log))
        yield Stack(mllp, dicom, logs, env["CELERY_BROKER_URL"])


@pytest.fixture(autouse=True)
def station(transactional_db) -> None:
    register_station("CT1")


# --- independent peers ------------------------------------------------------------------------


def orm(control: str, placer: str, msg_id: str, patient: str) -> bytes:
    lines = [
        f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261126101500||ORM^O01|{msg_id}|P|2.3.1",
        f"PID|||{patient}^^^HOSP||SCALE^OUT||19800101|F",
        f"ORC|{control}|{placer}^HIS|||{'CA' if control == 'CA' else 'SC'}||^^^20261127090000^^R|||||||||||CT1",
        f"OBR|1|{placer}^HIS||^^^P1^CT head^LOCAL" + "|" * 14 + "|" * 6 + "CT",
    ]
    return ("\r".join(lines) + "\r").encode()


class MllpSender:
    """A plain-socket HL7 sender on one connection, one message at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, message: bytes) -> str:
        self.sock.sendall(VT + message + FS_CR)
        while FS_CR not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("listener closed the connection")
            self.buffer += chunk
        frame, _, self.buffer = self.buffer.partition(FS_CR)
        return frame.lstrip(VT).decode()

    def close(self) -> None:
        self.sock.close()


def msa_code(ack: str) -> str:
    return next(line.split("|")[1] for line in ack.split("\r") if line.startswith("MSA|"))


def send_one(port: int, message: bytes) -> str:
    sender = MllpSender(port)
    try:
        return sender.send(message)
    finally:
        sender.close()


def all_at_once(calls: list[Callable[[], object]]) -> list[object]:
    """Run the calls on their own threads, released together by a barrier."""
    barrier = threading.Barrier(len(calls))

    def go(call: Callable[[], object]) -> object:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(go, c) for c in calls]]


def exam_of(placer: str) -> RequestedProcedure:
    return RequestedProcedure.objects.get(order__placer_order_number=placer)


# --- orders -----------------------------------------------------------------------------------


SENDERS_PER_LISTENER, ORDERS_PER_SENDER = 3, 25


def test_orders_sent_to_every_listener_at_once_are_each_stored_exactly_once(stack):
    run = uuid.uuid4().hex[:6]

    def sender(listener: int, number: int) -> list[str]:
        peer, codes = MllpSender(stack.mllp[listener]), []
        for n in range(ORDERS_PER_SENDER):
            key = f"{run}L{listener}S{number}N{n}"
            codes.append(msa_code(peer.send(orm("NW", f"P{key}", f"M{key}", f"PAT{run}{n % 7}"))))
        peer.close()
        return codes

    calls = [lambda i=i, s=s: sender(i, s) for i in range(2) for s in range(SENDERS_PER_LISTENER)]
    codes = [code for result in all_at_once(calls) for code in result]
    expected = 2 * SENDERS_PER_LISTENER * ORDERS_PER_SENDER
    assert codes == ["AA"] * expected
    orders = ImagingOrder.objects.filter(placer_order_number__startswith=f"P{run}")
    assert orders.count() == expected
    assert RequestedProcedure.objects.filter(order__in=orders).count() == expected
    assert RequestedProcedure.objects.filter(order__in=orders).values("accession_number").distinct().count() == expected
    # Seven patients were named by every sender: each exists once, however many processes raced.
    assert len({o.patient_id for o in orders}) == 7


def test_one_order_sent_to_both_listeners_at_once_is_stored_once_and_the_other_gets_AE(stack):
    run = uuid.uuid4().hex[:6]
    for n in range(8):
        placer = f"P{run}D{n}"
        acks = all_at_once(
            [partial(send_one, p, orm("NW", placer, f"M{run}D{n}-{i}", f"PAT{run}")) for i, p in enumerate(stack.mllp)]
        )
        assert sorted(msa_code(a) for a in acks) == ["AA", "AE"], acks
        assert ImagingOrder.objects.filter(placer_order_number=placer).count() == 1


def test_a_repeated_control_id_on_the_other_listener_gets_the_original_ack_and_changes_nothing(stack):
    run = uuid.uuid4().hex[:6]
    message = orm("NW", f"P{run}R", f"M{run}R", f"PAT{run}")
    first = send_one(stack.mllp[0], message)
    again = send_one(stack.mllp[1], message)
    assert msa_code(first) == "AA" and again == first
    assert ImagingOrder.objects.filter(placer_order_number=f"P{run}R").count() == 1
    assert InboundMessage.objects.filter(control_id=f"M{run}R").exclude(outcome="").count() >= 1


# --- MPPS against HL7 cancel ------------------------------------------------------------------


RACES = 10


def test_mpps_start_racing_an_hl7_cancel_has_exactly_one_winner_per_exam(stack):
    run = uuid.uuid4().hex[:6]
    placers = [f"P{run}X{n}" for n in range(RACES)]
    for n, placer in enumerate(placers):
        assert msa_code(send_one(stack.mllp[n % 2], orm("NW", placer, f"M{placer}", f"PAT{run}{n}"))) == "AA"
    for n, placer in enumerate(placers):
        exam = exam_of(placer)
        assert exam.status == ExamStatus.SCHEDULED
        # The cancel and the N-CREATE go to different listener copies, alternating which pair.
        mllp, dicom = stack.mllp[n % 2], stack.dicom[(n + 1) % 2]
        ack, status = all_at_once(
            [
                partial(send_one, mllp, orm("CA", placer, f"C{placer}", f"PAT{run}{n}")),
                partial(MppsScu(dicom).create, in_progress([step_item(exam)]), generate_uid()),
            ]
        )
        cancelled, started = msa_code(ack) == "AA", status.Status == STATUS_SUCCESS
        assert cancelled != started, f"{placer}: ACK {ack!r}, MPPS status 0x{status.Status:04X}"
        if cancelled:
            assert status.Status != STATUS_SUCCESS and status.get("ErrorComment"), status
        else:
            assert msa_code(ack) == "AE", ack
        final_status = exam_of(placer).status
        assert final_status == (ExamStatus.CANCELLED if cancelled else ExamStatus.IN_PROGRESS)
        transitions = [
            e.detail.get("new_status")
            for e in AuditEvent.objects.filter(requested_procedure=exam)
            if e.detail.get("old_status") == ExamStatus.SCHEDULED
        ]
        assert transitions == [final_status], transitions


# --- arrivals on different copies -------------------------------------------------------------


EXAMS, IMAGES = 6, 4


def test_arrivals_split_over_both_scps_make_each_exam_ready_once(stack, tmp_path):
    run = uuid.uuid4().hex[:6]
    scans = []
    for n in range(EXAMS):
        placer = f"P{run}A{n}"
        assert msa_code(send_one(stack.mllp[n % 2], orm("NW", placer, f"M{placer}", f"PAT{run}{n}"))) == "AA"
        exam, mpps_uid, series_uid = exam_of(placer), generate_uid(), generate_uid()
        sops = [generate_uid() for _ in range(IMAGES)]
        files = [
            ct_file(tmp_path / placer, exam.study_instance_uid, series_uid, s, exam.accession_number) for s in sops
        ]
        # N-CREATE on one SCP, N-SET on the other: the performed step lives in the database.
        assert MppsScu(stack.dicom[n % 2]).create(in_progress([step_item(exam)]), mpps_uid).Status == STATUS_SUCCESS
        scans.append((exam, mpps_uid, series_uid, sops, files))

    def perform(n: int) -> None:
        _, mpps_uid, series_uid, sops, files = scans[n]
        half = IMAGES // 2
        outputs = all_at_once(
            [lambda: storescu(stack.dicom[0], files[:half]), lambda: storescu(stack.dicom[1], files[half:])]
        )
        for output in outputs:
            assert "Received Store Response (Success)" in output, output
        series = [performed_series(series_uid, sops)]
        assert MppsScu(stack.dicom[(n + 1) % 2]).set(mpps_uid, final(series=series)).Status == STATUS_SUCCESS

    all_at_once([lambda n=n: perform(n) for n in range(EXAMS)])
    for exam, *_ in scans:
        wait_until(
            lambda e=exam: RequestedProcedure.objects.get(pk=e.pk).status == ExamStatus.READY_FOR_READING, "ready"
        )
    for exam, _, _, sops, _ in scans:
        assert Instance.objects.filter(sop_instance_uid__in=sops).count() == IMAGES
        assert ready_events(exam) == 1
    if stack.broker.startswith("amqp"):  # RabbitMQ deals tasks round robin; the embedded broker polls
        counts = [log.read_text(errors="replace").count("check_completeness") for log in stack.worker_logs]
        assert sum(1 for c in counts if c) >= 2, f"completeness checks per worker: {counts}"
