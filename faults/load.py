"""Load for the fault scenarios: a HIS sending ORM^O01 over MLLP, modalities doing MPPS and
C-STORE, radiologists signing reports. Each load retries as a real peer would (same MSH-10,
same SOP Instance UIDs) and records what it was finally told, so the checks can compare it
with the database."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.db import close_old_connections, connection
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
STATUS_DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.4.2: N-CREATE of an instance that exists
STATUS_PROCESSING_FAILURE = 0x0110  # with Error ID A710: N-SET after COMPLETED (a retry that already won)
ERROR_ID_FINAL_STATE = 0xA710


def transient(status: int) -> bool:
    """The load's datasets are valid, so a processing failure or out-of-resources answer can
    only come from the fault (e.g. the database restarting): a modality retries it."""
    return status == STATUS_PROCESSING_FAILURE or 0xA700 <= status <= 0xA7FF or 0xC000 <= status <= 0xCFFF


@dataclass
class Tally:
    """What one load did: attempts, retries after a fault, and final outcomes by key."""

    attempts: int = 0
    retries: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, code: str) -> int:
        return sum(1 for v in self.outcomes.values() if v == code)


def retrying(tally: Tally, key: str, action: Callable[[], str], deadline: float, pause: float = 0.3) -> str:
    """Run `action` until it returns a final outcome or the deadline passes; errors (connection
    refused, association aborted, database gone) are retried as a peer would."""
    while time.monotonic() < deadline:
        with tally.lock:
            tally.attempts += 1
        try:
            outcome = action()
        except Exception:  # every transport error is a retry for a peer
            outcome = "retry"
            close_old_connections()
            connection.close()
        if outcome != "retry":
            tally.outcomes[key] = outcome
            return outcome
        with tally.lock:
            tally.retries += 1
        time.sleep(pause)
    tally.outcomes[key] = "no answer"
    return "no answer"


# --- HIS: ORM^O01 over MLLP ----------------------------------------------------------------


def orm_message(n: int, run: str) -> tuple[str, bytes]:
    """A new order (ORC-1 NW) with a unique control id, placer number and accession."""
    control = f"F{run}{n:05d}"
    placer, accession = f"FP{run}{n:05d}", f"FA{run}{n:05d}"
    lines = [
        f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261126101500||ORM^O01|{control}|P|2.3.1",
        f"PID|||FPID{run}{n:05d}^^^HOSP||FAULT^LOAD{n}||19800101|F",
        f"ORC|NW|{placer}^HIS|||SC||^^^20261127090000^^R",
        f"OBR|1|{placer}^HIS||^^^P1^CT head^LOCAL||||||||||||||{accession}||||||CT",
    ]
    return placer, ("\r".join(lines) + "\r").encode()


class OrderSender(threading.Thread):
    """Sends `count` ORMs on one MLLP connection, reconnecting and resending the same message
    when the connection fails before its ACK; AR (e.g. database outage) is retried too."""

    def __init__(self, address: tuple[str, int], count: int, deadline: float, pace: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.address, self.count, self.deadline, self.pace = address, count, deadline, pace
        self.run_id = uuid.uuid4().hex[:6].upper()
        self.tally = Tally()
        self.sock: socket.socket | None = None

    def _exchange(self, frame: bytes) -> str:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=15)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock.sendall(VT + frame + FS + CR)
            buffer = b""
            while FS + CR not in buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed before the ACK")
                buffer += chunk
        except OSError:
            self.sock.close()
            self.sock = None
            raise
        msa = next(s for s in buffer[1:].split(FS)[0].decode().split("\r") if s.startswith("MSA|"))
        code = msa.split("|")[1]
        return "retry" if code in ("AR", "CR") else code

    def run(self) -> None:
        for n in range(self.count):
            placer, frame = orm_message(n, self.run_id)
            retrying(self.tally, placer, lambda f=frame: self._exchange(f), self.deadline)
            time.sleep(self.pace)  # a HIS sends over a while, so the fault lands mid-load
        if self.sock is not None:
            self.sock.close()


# --- Modality: MPPS IN PROGRESS, C-STORE, MPPS COMPLETED -----------------------------------


def _associate(port: int, calling: str, context: str):
    ae = AE(ae_title=calling)
    ae.add_requested_context(context)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    assoc = ae.associate("127.0.0.1", port, ae_title="RIS")
    if not assoc.is_established:
        raise ConnectionError("association not established")
    return assoc


def _dimse(port: int, calling: str, context: str, call: Callable):
    assoc = _associate(port, calling, context)
    try:
        status = call(assoc)
    finally:
        if assoc.is_established:
            assoc.release()
    if status is None or "Status" not in status:
        raise ConnectionError("no response")
    return status


class ModalityLoad(threading.Thread):
    """Performs each exam as a modality would: N-CREATE, C-STORE of its images, N-SET COMPLETED,
    each operation retried until it has a final answer. `exams` are (exam, create_ds, files,
    complete_ds, mpps_uid) tuples prepared before the fault."""

    def __init__(self, port: Callable[[], int], exams: list, deadline: float, calling: str = "CT1") -> None:
        super().__init__(daemon=True)
        self.port, self.exams, self.deadline, self.calling = port, exams, deadline, calling
        self.tally = Tally()
        self.in_association = threading.Event()  # set while a C-STORE association is open

    def _create(self, ds, uid) -> str:
        status = int(
            _dimse(
                self.port(),
                self.calling,
                ModalityPerformedProcedureStep,
                lambda a: a.send_n_create(ds, ModalityPerformedProcedureStep, uid)[0],
            ).Status
        )
        if status in (0x0000, STATUS_DUPLICATE_SOP_INSTANCE):
            return "ok"
        return "retry" if transient(status) else f"0x{status:04X}"

    def _store(self, files: list[Path]) -> str:
        assoc = _associate(self.port(), self.calling, CTImageStorage)
        self.in_association.set()
        try:
            for path in files:
                status = assoc.send_c_store(path)
                if status is None or "Status" not in status:
                    raise ConnectionError("no C-STORE response")
                if int(status.Status) != 0x0000:
                    return "retry" if transient(int(status.Status)) else f"0x{int(status.Status):04X}"
                time.sleep(0.05)  # a modality sends images over a while: room for a fault mid-association
        finally:
            self.in_association.clear()
            if assoc.is_established:
                assoc.release()
        return "ok"

    def _complete(self, ds, uid) -> str:
        answer = _dimse(
            self.port(),
            self.calling,
            ModalityPerformedProcedureStep,
            lambda a: a.send_n_set(ds, ModalityPerformedProcedureStep, uid)[0],
        )
        status = int(answer.Status)
        if status == 0x0000 or (status == STATUS_PROCESSING_FAILURE and answer.get("ErrorID") == ERROR_ID_FINAL_STATE):
            return "ok"
        return "retry" if transient(status) else f"0x{status:04X}"

    def run(self) -> None:
        for exam, create_ds, files, complete_ds, uid in self.exams:
            key = exam.accession_number
            for what, action in (
                ("create", lambda c=create_ds, u=uid: self._create(c, u)),
                ("store", lambda f=files: self._store(f)),
                ("complete", lambda c=complete_ds, u=uid: self._complete(c, u)),
            ):
                if retrying(self.tally, f"{key}:{what}", action, self.deadline) != "ok":
                    break
            self.tally.outcomes[key] = self.tally.outcomes.get(f"{key}:complete", "not done")
            time.sleep(0.5)


# --- Radiologists: preliminary then final -----------------------------------------------------


class SignOffLoad(threading.Thread):
    """Signs a preliminary then a final report for each ready exam, in this process (the commit
    queues the ORU delivery on the broker, or leaves it to the sweep if the broker is down).
    A signature whose commit was lost in a fault is retried; "duplicate" means it had landed."""

    def __init__(self, sign: Callable, exams: list, deadline: float) -> None:
        super().__init__(daemon=True)
        self.sign, self.exams, self.deadline = sign, exams, deadline
        self.tally = Tally()

    def _sign(self, exam, final: bool) -> str:
        from ris import workflow
        from ris.models import RequestedProcedure

        try:
            self.sign(RequestedProcedure.objects.select_related("order__patient").get(pk=exam.pk), final)
        except workflow.WorkflowError as exc:
            return "ok" if exc.code == "duplicate" else exc.code
        return "ok"

    def run(self) -> None:
        try:
            for exam in self.exams:
                for final in (False, True):
                    key = f"{exam.accession_number}:{'final' if final else 'prelim'}"
                    retrying(self.tally, key, lambda e=exam, f=final: self._sign(e, f), self.deadline)
                time.sleep(0.5)
        finally:
            connection.close()


def prepare_scan(
    folder: Path, exam, images: int, make_file: Callable, create: Callable, final: Callable, series: Callable
):
    """The datasets and files of one exam's acquisition, made before any fault."""
    mpps_uid, series_uid = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(images)]
    files = [make_file(folder, exam.study_instance_uid, series_uid, s, exam.accession_number) for s in sops]
    return exam, create, files, final(series=[series(series_uid, sops)]), mpps_uid
