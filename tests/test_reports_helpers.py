"""Helpers for the results-out tests (no tests here): exams brought to READY_FOR_READING through
the workflow, as the MPPS and arrival tracking would, radiologists to sign them, and two
independent peers: a HIS on MLLP (plain sockets) and a FHIR server (http.server)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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


def scheduled_exam(
    *, family_name: str = "NGUYỄN", given_name: str = "Văn An", accession: str = ""
) -> RequestedProcedure:
    """A CT head exam ordered by the HIS and scheduled on CT1 (placed through ris.workflow)."""
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
    return order.requested_procedures.get()


def ready_exam(
    *,
    family_name: str = "NGUYỄN",
    given_name: str = "Văn An",
    images: int = 2,
    accession: str = "",
) -> RequestedProcedure:
    """An exam ordered, performed (MPPS in progress, completed), its images arrived, and marked
    READY_FOR_READING, each step through ris.workflow."""
    exam = scheduled_exam(family_name=family_name, given_name=given_name, accession=accession)
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


# --- Independent peers, written here with plain sockets / http.server -----------------------

VT, FS_CR = b"\x0b", b"\x1c\x0d"


def control_id_of(message: str) -> str:
    msh = message.split("\r", 1)[0].split("|")
    return msh[9] if len(msh) > 9 else ""


def ack_for(message: str, code: str, text: str = "") -> bytes:
    msh = message.split("\r", 1)[0].split("|")
    header = f"MSH|^~\\&|HIS|HOSP|{msh[2]}|{msh[3]}|20260101000000||ACK^R01^ACK|A{time.time_ns()}|P|2.5.1"
    msa = f"MSA|{code}|{control_id_of(message)}" + (f"|{text}" if text else "")
    err = "\rERR||OBR^1^18|101^Required field missing^HL70357|E" if code == "AE" else ""
    return (header + "\r" + msa + err + "\r").encode()


class HISPeer:
    """A HIS on MLLP: records every message it gets and answers as `answer(message, n)` says:
    "AA"/"AE"/"AR" (an ACK), "garbage" (bytes that are no HL7) or "silence" (no answer).
    `up()` / `down()` open and close its port (the port number stays the same)."""

    def __init__(self, answer: Callable[[str, int], str] | str = "AA") -> None:
        self.answer = answer if callable(answer) else (lambda _m, _n: answer)
        self.received: list[str] = []
        self.accepted: list[str] = []  # control ids answered AA, in order
        self.lock = threading.Lock()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.server: socket.socket | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def up(self) -> HISPeer:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the serving thread
            self.server.close()
            self.server = None

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while VT in buffer and FS_CR in buffer:
                    start = buffer.index(VT)
                    end = buffer.index(FS_CR, start)
                    message = buffer[start + 1 : end].decode("utf-8")
                    buffer = buffer[end + 2 :]
                    with self.lock:
                        self.received.append(message)
                        n = len(self.received)
                    reply = self.answer(message, n)
                    if reply == "silence":
                        continue
                    if reply == "garbage":
                        conn.sendall(VT + b"this is not HL7" + FS_CR)
                        continue
                    if reply == "AA":
                        with self.lock:
                            self.accepted.append(control_id_of(message))
                    conn.sendall(VT + ack_for(message, reply, "" if reply == "AA" else "refused by test HIS") + FS_CR)

    def received_ids(self) -> list[str]:
        with self.lock:
            return [control_id_of(m) for m in self.received]


class FHIRPeer:
    """A FHIR server that takes transaction Bundles and performs their conditional updates:
    one stored resource per (type, identifier) URL, so duplicates would show. `status(n)` says
    which HTTP status the n-th POST gets (200 performs the transaction); "timeout" sleeps."""

    def __init__(self, status: Callable[[int], int | str] | int = 200) -> None:
        self.status = status if callable(status) else (lambda _n: status)
        self.bundles: list[dict] = []
        self.store: dict[str, dict] = {}
        self.lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with peer.lock:
                    peer.bundles.append(body)
                    n = len(peer.bundles)
                status = peer.status(n)
                if status == "timeout":
                    time.sleep(3)
                    return
                if status != 200:
                    outcome = {
                        "resourceType": "OperationOutcome",
                        "issue": [
                            {"severity": "error", "code": "invalid", "diagnostics": f"test server says {status}"}
                        ],
                    }
                    self._send(status, outcome)
                    return
                responses = []
                with peer.lock:
                    for entry in body["entry"]:
                        url = entry["request"]["url"]
                        created = url not in peer.store
                        peer.store[url] = entry["resource"]
                        responses.append({"response": {"status": "201 Created" if created else "200 OK"}})
                self._send(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": responses})

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def stored(self, resource_type: str) -> list[dict]:
        with self.lock:
            return [r for url, r in self.store.items() if url.startswith(resource_type + "?")]


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


# --- A worker per test module ------------------------------------------------------------------


def worker_argv(name: str, *extra: str) -> list[str]:
    """A Celery worker subprocess command line (one process, named so its log is recognisable)."""
    argv = [sys.executable, "-m", "celery", "-A", "ris", "worker", "--concurrency", "1", "--loglevel", "INFO"]
    return [*argv, "--without-gossip", "--without-mingle", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", *extra]


def module_env(database_url: str, tmp: Path, **variables: str) -> dict[str, str]:
    """Environment for the subprocesses of one test module: the test database, a private queue
    on this run's broker, and the given RIS_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIS_")}
    env.update(
        {
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL") or f"sqla+sqlite:///{tmp / 'broker.sqlite3'}",
            "RIS_CELERY_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
            "PYTHONUNBUFFERED": "1",
            **variables,
        }
    )
    return env
