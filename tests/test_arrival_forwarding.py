"""Forwarding received instances to RIS_PACS through the outbox: the modality is never refused
because the PACS is down, the failure is visible, and once DCMTK storescp (the PACS here)
comes up every instance reaches it exactly once. A real worker delivers; storescu sends."""

from __future__ import annotations

import os
import time

import pytest
from pydicom.uid import generate_uid

from ris.models import OutboundMessage, OutboxStatus
from tests.conftest import free_port, require_tool, running
from tests.test_arrival_tracking import ct_file, storescu, wait_until
from tests.test_mpps_scp import register_station

pytestmark = pytest.mark.live


@pytest.fixture
def pacs_port(ris_env) -> int:
    port = free_port()
    ris_env["RIS_PACS"] = f"PACS@127.0.0.1:{port}"
    ris_env["RIS_OUTBOX_RETRY_BASE_SECONDS"] = "0.5"
    ris_env["RIS_OUTBOX_RETRY_MAX_SECONDS"] = "1"
    return port


def rows() -> list[OutboundMessage]:
    return list(OutboundMessage.objects.filter(destination="pacs"))


def test_pacs_down_then_up_gets_every_instance_exactly_once(pacs_port, dicom_scp, celery_worker_process, tmp_path):
    register_station("CT1")
    study, series = generate_uid(), generate_uid()
    files = [ct_file(tmp_path / "in", study, series, generate_uid()) for _ in range(2)]
    assert storescu(dicom_scp[1], files).count("Received Store Response (Success)") == 2
    wait_until(lambda: len(rows()) == 2 and all(r.attempts >= 1 and r.last_error for r in rows()), "failed attempts")
    assert all(r.status == OutboxStatus.PENDING for r in rows())  # kept for retry, not lost
    received = tmp_path / "pacs"
    received.mkdir()
    argv = [require_tool("storescp"), "-v", "-aet", "PACS", "-od", str(received), str(pacs_port)]
    log = tmp_path / "storescp.log"
    with running(argv, {**os.environ, "TCP_NODELAY": "1"}, log, pacs_port):
        wait_until(lambda: all(r.status == OutboxStatus.DELIVERED for r in rows()), "delivery", 60)
        time.sleep(2)  # any duplicate delivery would arrive now
    assert log.read_text(errors="replace").count("Received Store Request") == 2
    assert len(list(received.iterdir())) == 2


def test_copies_from_the_pacs_itself_are_not_forwarded_back(pacs_port, dicom_scp, tmp_path):
    register_station("PACS")
    file = ct_file(tmp_path / "in", generate_uid(), generate_uid(), generate_uid())
    assert "Received Store Response (Success)" in storescu(dicom_scp[1], [file], calling="PACS")
    assert rows() == []
