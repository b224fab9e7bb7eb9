"""Filler status to the HIS (RAD-3, swf-spec §3): MPPS IN PROGRESS and COMPLETED reach a HIS
listening on MLLP as ORM^O01 with ORC-5 IP then CM, through the outbox and a real worker.
The HIS here is a plain-socket MLLP listener that answers every message with AA."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from pydicom.uid import generate_uid

from ris.models import OutboundMessage, OutboxStatus
from tests.conftest import free_port
from tests.test_mpps_scp import MppsScu, final, in_progress, order_exam, register_station, step_item

pytestmark = pytest.mark.live

START, END = b"\x0b", b"\x1c\x0d"


class HisListener:
    """Accepts MLLP connections, records each message, answers AA with the same MSH-10."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[str] = []
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while chunk := conn.recv(65536):
                buffer += chunk
                while END in buffer:
                    frame, buffer = buffer.split(END, 1)
                    text = frame.lstrip(START).decode()
                    self.messages.append(text)
                    control_id = text.split("\r")[0].split("|")[9]
                    ack = f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20260101||ACK^O01|A{control_id}|P|2.3.1\rMSA|AA|{control_id}\r"
                    conn.sendall(START + ack.encode() + END)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def his(ris_env):
    listener = HisListener()
    ris_env["RIS_HIS_MLLP"] = f"127.0.0.1:{listener.port}"
    yield listener
    listener.close()


def test_mpps_in_progress_and_completed_reach_the_his_as_orm_ip_then_cm(his, dicom_scp, celery_worker_process):
    register_station()
    exam = order_exam()
    uid = generate_uid()
    scu = MppsScu(dicom_scp[1])
    assert scu.create(in_progress([step_item(exam)]), uid).Status == 0x0000
    assert scu.set(uid, final()).Status == 0x0000
    deadline = time.monotonic() + 40
    while len(his.messages) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    orc = [next(s for s in m.split("\r") if s.startswith("ORC|")).split("|") for m in his.messages]
    assert [(o[1], o[5]) for o in orc] == [("SC", "IP"), ("SC", "CM")]
    assert all(exam.accession_number in m for m in his.messages)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and OutboundMessage.objects.exclude(status=OutboxStatus.DELIVERED).exists():
        time.sleep(0.2)
    assert set(OutboundMessage.objects.values_list("status", flat=True)) == {OutboxStatus.DELIVERED}
