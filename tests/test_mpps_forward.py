"""Forwarding MPPS to an Image Manager (PPS Manager, swf-spec §1): every accepted N-CREATE and
N-SET reaches the MPPS SCP named by RIS_MPPS_FORWARD, in order, through the outbox; a forward
target that is down never makes the RIS refuse the modality, and the copies arrive once it is up."""

from __future__ import annotations

import threading
import time

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from ris.models import ExamStatus, OutboundMessage
from tests.conftest import celery_worker_argv, free_port, manage, running
from tests.test_mpps_scp import MppsScu, final, in_progress, order_exam, register_station, reload, step_item

pytestmark = pytest.mark.live


class ImageManager:
    """A pynetdicom MPPS SCP standing in for the PACS: records what it is sent, in order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[str, str, str]] = []
        self.server = None

    def _create(self, event):
        ds = event.attribute_list
        self.received.append(("N-CREATE", event.request.AffectedSOPInstanceUID, ds.PerformedProcedureStepStatus))
        return 0x0000, ds

    def _set(self, event):
        ds = event.modification_list
        self.received.append(("N-SET", event.request.RequestedSOPInstanceUID, ds.PerformedProcedureStepStatus))
        return 0x0000, ds

    def start(self) -> None:
        ae = AE(ae_title="IM")
        ae.add_supported_context(ModalityPerformedProcedureStep)
        handlers = [(evt.EVT_N_CREATE, self._create), (evt.EVT_N_SET, self._set)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


@pytest.fixture
def forwarding_stack(ris_env, tmp_path):
    """rundicom and a worker with RIS_MPPS_FORWARD pointing at an Image Manager (not yet started)."""
    manager = ImageManager(free_port())
    ris_env.update(
        {
            "RIS_MPPS_FORWARD": f"IM@127.0.0.1:{manager.port}",
            "RIS_OUTBOX_RETRY_BASE_SECONDS": "1",
            "RIS_OUTBOX_RETRY_MAX_SECONDS": "2",
        }
    )
    register_station()
    port = int(ris_env["RIS_DICOM_PORT"])
    with (
        running(manage("rundicom"), ris_env, tmp_path / "dicom.log", port),
        running(celery_worker_argv(), ris_env, tmp_path / "worker.log"),
    ):
        try:
            yield MppsScu(port), manager
        finally:
            manager.stop()


def test_n_create_and_n_set_reach_the_image_manager_in_order(forwarding_stack):
    scu, manager = forwarding_stack
    manager.start()
    exam = order_exam()
    uid = generate_uid()
    assert scu.create(in_progress([step_item(exam)]), uid).Status == 0x0000
    assert scu.set(uid, final()).Status == 0x0000
    wait_for(lambda: len(manager.received) == 2)
    assert manager.received == [("N-CREATE", uid, "IN PROGRESS"), ("N-SET", uid, "COMPLETED")]
    assert reload(exam).status == ExamStatus.COMPLETED
    wait_for(
        lambda: (
            set(OutboundMessage.objects.filter(destination="mpps").values_list("status", flat=True)) == {"DELIVERED"}
        )
    )


def test_image_manager_down_never_refuses_the_modality_and_gets_the_copies_later(forwarding_stack):
    scu, manager = forwarding_stack
    exam = order_exam()
    uid = generate_uid()
    assert scu.create(in_progress([step_item(exam)]), uid).Status == 0x0000
    assert scu.set(uid, final()).Status == 0x0000
    wait_for(lambda: OutboundMessage.objects.filter(destination="mpps", attempts__gte=1).exists())
    assert not manager.received
    threading.Timer(0, manager.start).start()
    wait_for(lambda: len(manager.received) == 2, timeout=90)
    assert [op for op, _, _ in manager.received] == ["N-CREATE", "N-SET"]


def test_mpps_from_the_image_manager_itself_is_not_sent_back(forwarding_stack):
    scu, manager = forwarding_stack
    manager.start()
    register_station("IM")
    exam = order_exam()
    assert MppsScu(scu.port, calling="IM").create(in_progress([step_item(exam)]), generate_uid()).Status == 0x0000
    assert not OutboundMessage.objects.filter(destination="mpps").exists()
