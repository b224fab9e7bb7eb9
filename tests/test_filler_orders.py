"""Filler orders to the HIS (IHE RAD-3, swf-spec §3): an order a scheduler enters in the web UI
reaches the HIS as ORM^O01 with ORC-1 SN, through the outbox, a real Celery worker subprocess
and a HIS peer written with plain sockets (tests/test_reports_helpers.HISPeer).
An HL7 placer's own orders are never echoed back to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.urls import reverse

from ris import workflow
from ris.models import OutboundMessage, OutboxStatus, RequestedProcedure
from tests.conftest import database_url_of_test_db, publishing_to, running
from tests.test_reports_helpers import HISPeer, module_env, wait_until, worker_argv
from tests.ui_support import make_patient, make_procedure

FAST_RETRY = {"RIS_OUTBOX_RETRY_BASE_SECONDS": "0.2", "RIS_OUTBOX_MAX_ATTEMPTS": "4", "RIS_OUTBOX_ACK_TIMEOUT": "2"}


@pytest.fixture(scope="module")
def filler_env(his_peer, django_db_setup, django_db_blocker, tmp_path_factory) -> dict[str, str]:
    with django_db_blocker.unblock():
        url = database_url_of_test_db()
    tmp = tmp_path_factory.mktemp("filler")
    return module_env(url, tmp, RIS_HIS_MLLP=his_peer.address, TMP_DIR=str(tmp), **FAST_RETRY)


@pytest.fixture(scope="module")
def worker(filler_env) -> Iterator[None]:
    with running(worker_argv("filler"), filler_env, Path(filler_env["TMP_DIR"]) / "worker.log"):
        yield


@pytest.fixture
def his(his_peer, filler_env, transactional_db, settings) -> HISPeer:
    his_peer.answer = lambda _m, _n: "AA"
    with his_peer.lock:
        his_peer.received.clear()
        his_peer.accepted.clear()
    settings.RIS_HIS_MLLP = his_peer.address
    settings.RIS_HIS_FILLER_ORDERS = True
    with publishing_to(filler_env):
        yield his_peer


@pytest.fixture
def scheduler(client, ui_users):
    client.force_login(ui_users["scheduler"])
    return client


def enter_order(client, *procedures, placer: str = "") -> list[RequestedProcedure]:
    """A walk-in's order as a scheduler enters it on the order page."""
    patient = make_patient("BN77", "Nguyễn", "Thị", "Đào")
    response = client.post(
        f"{reverse('web:order_new')}?patient={patient.pk}",
        {"o-procedures": [p.pk for p in procedures], "o-priority": "STAT", "o-placer_order_number": placer},
    )
    assert response.status_code == 302, response.content[:2000]
    return list(RequestedProcedure.objects.filter(order__patient=patient).order_by("id"))


def segments(message: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in message.split("\r") if s.startswith(name + "|")]


def row_state(row: OutboundMessage) -> str:
    row.refresh_from_db()
    return row.status


@pytest.mark.live
def test_order_entered_in_the_ui_reaches_the_his_as_orm_sn_in_utf8(his, scheduler, worker):
    (exam,) = enter_order(scheduler, make_procedure("CTHEAD", "CT", 20, "CT sọ não"))
    row = OutboundMessage.objects.get(destination="orm")
    assert wait_until(lambda: row_state(row) == OutboxStatus.DELIVERED)
    (message,) = his.received
    raw = message.encode("utf-8")  # the peer decoded the frame as UTF-8: a Latin-1 frame fails there
    assert "Nguyễn".encode() in raw and "sọ não".encode() in raw
    msh = message.split("\r")[0].split("|")
    assert (msh[8], msh[9], msh[17]) == ("ORM^O01", row.message_control_id, "UNICODE UTF-8")
    (pid,) = segments(message, "PID")
    assert pid[3] == "BN77^^^HOSP" and pid[5] == "Nguyễn^Đào^Thị"
    (orc,) = segments(message, "ORC")
    order = exam.order
    assert (orc[1], orc[2], orc[3], orc[5]) == ("SN", "", f"{order.filler_order_number}^RAD", "SC")
    assert orc[7].endswith("^S")  # STAT
    (obr,) = segments(message, "OBR")
    assert obr[3] == orc[3] and obr[4] == "CTHEAD^CT sọ não^LOCAL"
    assert (obr[18], obr[19], obr[24]) == (exam.accession_number, exam.requested_procedure_id, "CT")
    (zds,) = segments(message, "ZDS")
    assert zds[1] == f"{exam.study_instance_uid}^^Application^DICOM"
    assert row.requested_procedure == exam


@pytest.mark.live
def test_his_answering_ae_to_the_filler_order_parks_it_as_failed(his, scheduler, worker):
    his.answer = lambda _m, _n: "AE"
    enter_order(scheduler, make_procedure())
    row = OutboundMessage.objects.get(destination="orm")
    assert wait_until(lambda: row_state(row) == OutboxStatus.FAILED)
    assert row.attempts == 1 and "AE" in row.last_error and "refused by test HIS" in row.last_error


def test_order_with_two_procedures_is_one_message_with_an_order_group_each(scheduler, ui_users, settings):
    settings.RIS_HIS_MLLP = "127.0.0.1:9"  # nothing is delivered in this test: only the row is read
    exams = enter_order(
        scheduler, make_procedure("CTHEAD", "CT"), make_procedure("USABD", "US", 15, "US bụng"), placer="HIS-9"
    )
    (row,) = OutboundMessage.objects.filter(destination="orm")
    assert [o[1:3] for o in segments(row.payload, "ORC")] == [["SN", "HIS-9^HIS"], ["SN", "HIS-9^HIS"]]
    assert [(o[1], o[18], o[24]) for o in segments(row.payload, "OBR")] == [
        ("1", exams[0].accession_number, "CT"),
        ("2", exams[1].accession_number, "US"),
    ]


def test_no_filler_order_without_his_or_when_turned_off(scheduler, ui_users, settings):
    settings.RIS_HIS_MLLP = ""
    enter_order(scheduler, make_procedure("CTHEAD", "CT"))
    settings.RIS_HIS_MLLP = "127.0.0.1:9"
    settings.RIS_HIS_FILLER_ORDERS = False
    patient = make_patient("BN78")
    scheduler.post(
        f"{reverse('web:order_new')}?patient={patient.pk}",
        {"o-procedures": [make_procedure("X", "MR").pk], "o-priority": "ROUTINE"},
    )
    assert RequestedProcedure.objects.count() == 2
    assert not OutboundMessage.objects.exists()


def test_an_hl7_placers_order_is_not_sent_back_as_a_filler_order(db, settings):
    settings.RIS_HIS_MLLP = "127.0.0.1:9"
    request = workflow.OrderRequest(
        placer_order_number="PL1",
        placer_issuer="HIS",
        source_application="HIS",
        procedures=[workflow.ProcedureRequest(modality="CT", procedure_description="CT head")],
    )
    workflow.place_order(workflow.Actor.for_hl7("HIS", "HOSP"), make_patient(), request)
    assert RequestedProcedure.objects.count() == 1
    assert not OutboundMessage.objects.exists()
