"""Image arrival and completeness (swf-spec §7): DCMTK storescu as the storage SCU, pynetdicom
as the MPPS and IAN SCU, against `manage.py rundicom` with a real Celery worker on the broker
of this run. An exam is READY_FOR_READING when its MPPS is COMPLETED, every instance it lists
has arrived, and the quiet period (1 s here) has passed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import InstanceAvailabilityNotification

from ris.models import AuditEvent, ExamStatus, Instance, RequestedProcedure, Study, WorkerHeartbeat
from tests.conftest import celery_worker_argv, manage, require_tool, running, send_task
from tests.test_mpps_scp import (
    MppsScu,
    final,
    in_progress,
    order_exam,
    performed_series,
    register_station,
    step_item,
)

pytestmark = pytest.mark.live

WAIT_SECONDS = 40


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def status_of(exam: RequestedProcedure) -> str:
    return RequestedProcedure.objects.get(pk=exam.pk).status


def ct_file(folder: Path, study_uid: str, series_uid: str, sop_uid: str, accession: str = "") -> Path:
    """A small valid CT Image Storage file (Part 10, explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.AccessionNumber, ds.PatientID, ds.PatientName = accession, "PID1", "TEST^PATIENT"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.StudyDate = "CT", 1, 1, "20260101"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(32)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sop_uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def storescu(port: int, files: list[Path], calling: str = "CT1") -> str:
    result = subprocess.run(
        [require_tool("storescu"), "-v", "-aet", calling, "-aec", "RIS", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    return result.stdout + result.stderr


def send_ian(port: int, study_uid: str, series_uid: str, sop_uids: list[str], accession: str = "") -> Dataset:
    """The PACS side of RAD-49: one N-CREATE listing the instances it holds, all ONLINE."""
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    ds.AccessionNumber = accession
    ds.ReferencedPerformedProcedureStepSequence = []
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    refs = []
    for uid in sop_uids:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, uid
        ref.InstanceAvailability, ref.RetrieveAETitle = "ONLINE", "PACS"
        refs.append(ref)
    series.ReferencedSOPSequence = refs
    ds.ReferencedSeriesSequence = [series]
    ae = AE(ae_title="PACS")
    ae.add_requested_context(InstanceAvailabilityNotification)
    assoc = ae.associate("127.0.0.1", port, ae_title="RIS")
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_create(ds, InstanceAvailabilityNotification, generate_uid())
    finally:
        assoc.release()
    return status


@pytest.fixture(autouse=True)
def short_qa_timeout(ris_env) -> None:
    """Instances missing 3 s after the MPPS completed put the exam on the QA list."""
    ris_env["RIS_ARRIVAL_MISSING_TIMEOUT_SECONDS"] = "3"


@pytest.fixture
def stack(dicom_scp, celery_worker_process, ris_env):
    """The DICOM SCP and a worker; CT1 and PACS are registered AEs."""
    register_station("CT1")
    register_station("PACS")
    return dicom_scp[1]


class Scan:
    """One exam performed on CT1: MPPS started, images made (not yet sent)."""

    def __init__(self, port: int, folder: Path, images: int = 3, exam: RequestedProcedure | None = None) -> None:
        self.exam = exam or order_exam()
        self.port, self.mpps_uid = port, generate_uid()
        self.series_uid = generate_uid()
        self.sop_uids = [generate_uid() for _ in range(images)]
        self.files = [
            ct_file(folder, self.exam.study_instance_uid, self.series_uid, uid, self.exam.accession_number)
            for uid in self.sop_uids
        ]
        assert MppsScu(port).create(in_progress([step_item(self.exam)]), self.mpps_uid).Status == 0x0000

    def complete(self, listed: list[str] | None = None) -> None:
        series = [performed_series(self.series_uid, self.sop_uids if listed is None else listed)]
        assert MppsScu(self.port).set(self.mpps_uid, final(series=series)).Status == 0x0000


def ready_events(exam: RequestedProcedure) -> int:
    return AuditEvent.objects.filter(requested_procedure=exam, action="exam.ready_for_reading").count()


# --- Storage SCP ------------------------------------------------------------------------------


def test_stored_instance_is_kept_under_the_storage_dir_by_uid_and_recorded(stack, ris_env, tmp_path):
    scan = Scan(stack, tmp_path / "out", images=1)
    output = storescu(stack, scan.files)
    assert "Received Store Response (Success)" in output, output
    stored = Path(ris_env["RIS_STORAGE_DIR"]) / scan.exam.study_instance_uid / scan.series_uid
    assert (stored / f"{scan.sop_uids[0]}.dcm").read_bytes()[128:132] == b"DICM"
    instance = Instance.objects.get(sop_instance_uid=scan.sop_uids[0])
    assert instance.source == "STORE" and instance.source_ae_title == "CT1"
    assert Study.objects.get(study_instance_uid=scan.exam.study_instance_uid).requested_procedure == scan.exam


def test_duplicate_store_succeeds_and_records_the_instance_once(stack, tmp_path):
    scan = Scan(stack, tmp_path / "out", images=1)
    storescu(stack, scan.files)
    output = storescu(stack, scan.files)
    assert "Received Store Response (Success)" in output, output
    assert Instance.objects.filter(sop_instance_uid=scan.sop_uids[0]).count() == 1


def test_images_before_mpps_completion_make_the_exam_ready_once_it_completes(stack, tmp_path):
    scan = Scan(stack, tmp_path / "out")
    storescu(stack, scan.files)
    assert status_of(scan.exam) == ExamStatus.IN_PROGRESS
    scan.complete()
    wait_until(lambda: status_of(scan.exam) == ExamStatus.READY_FOR_READING, "READY_FOR_READING")
    event = AuditEvent.objects.get(requested_procedure=scan.exam, action="exam.ready_for_reading")
    assert event.detail["expected"] == 3 and event.detail["arrived"] == 3 and event.actor == "arrival-tracking"


def test_images_after_mpps_completion_make_the_exam_ready(stack, tmp_path):
    scan = Scan(stack, tmp_path / "out")
    scan.complete()
    assert status_of(scan.exam) == ExamStatus.COMPLETED
    storescu(stack, scan.files)
    wait_until(lambda: status_of(scan.exam) == ExamStatus.READY_FOR_READING, "READY_FOR_READING")


def test_exam_waits_for_every_listed_instance_not_a_count(stack, ris_env, tmp_path):
    scan = Scan(stack, tmp_path / "out")
    scan.complete()
    # As many files as listed, but one of them is not a listed instance.
    other = ct_file(tmp_path / "other", scan.exam.study_instance_uid, scan.series_uid, generate_uid())
    storescu(stack, [*scan.files[:2], other])
    time.sleep(3)  # several quiet periods
    send_task(ris_env, "worklist.tasks.check_completeness", scan.exam.pk)
    time.sleep(2)
    assert status_of(scan.exam) == ExamStatus.COMPLETED
    storescu(stack, scan.files[2:])
    wait_until(lambda: status_of(scan.exam) == ExamStatus.READY_FOR_READING, "READY_FOR_READING")


def test_extra_instances_are_flagged_but_do_not_block(stack, tmp_path):
    scan = Scan(stack, tmp_path / "out", images=2)
    scan.complete(listed=scan.sop_uids[:1])
    storescu(stack, scan.files)
    wait_until(lambda: status_of(scan.exam) == ExamStatus.READY_FOR_READING, "READY_FOR_READING")
    assert RequestedProcedure.objects.get(pk=scan.exam.pk).qa_problem == "extra instances: 1"


def test_images_with_another_study_uid_are_matched_by_accession_number(stack, tmp_path):
    exam = order_exam()
    scan = Scan(stack, tmp_path / "out", images=1, exam=exam)
    own_study = ct_file(tmp_path / "own", generate_uid(), scan.series_uid, scan.sop_uids[0], exam.accession_number)
    scan.complete()
    storescu(stack, [own_study])
    wait_until(lambda: status_of(exam) == ExamStatus.READY_FOR_READING, "READY_FOR_READING")
    assert Study.objects.get(requested_procedure=exam).study_instance_uid != exam.study_instance_uid


def test_group_case_images_make_every_exam_of_the_mpps_ready(stack, tmp_path):
    first, second = order_exam(), order_exam()
    uid, series_uid, sops = generate_uid(), generate_uid(), [generate_uid(), generate_uid()]
    scu = MppsScu(stack)
    assert scu.create(in_progress([step_item(first), step_item(second)]), uid).Status == 0x0000
    assert scu.set(uid, final(series=[performed_series(series_uid, sops)])).Status == 0x0000
    storescu(stack, [ct_file(tmp_path, first.study_instance_uid, series_uid, s, first.accession_number) for s in sops])
    wait_until(lambda: {status_of(first), status_of(second)} == {ExamStatus.READY_FOR_READING}, "both ready")


def test_missing_instances_put_the_exam_on_the_qa_list_after_the_timeout(stack, ris_env, tmp_path):
    scan = Scan(stack, tmp_path / "out")
    scan.complete()
    storescu(stack, scan.files[:1])
    time.sleep(float(ris_env["RIS_ARRIVAL_MISSING_TIMEOUT_SECONDS"]) + 0.5)
    send_task(ris_env, "worklist.tasks.sweep_arrivals")
    wait_until(lambda: RequestedProcedure.objects.get(pk=scan.exam.pk).qa_problem != "", "QA flag")
    exam = RequestedProcedure.objects.get(pk=scan.exam.pk)
    assert exam.status == ExamStatus.COMPLETED and exam.qa_problem == "images missing: 2 of 3"
    storescu(stack, scan.files[1:])  # late images still make it ready, and clear the flag
    wait_until(lambda: status_of(exam) == ExamStatus.READY_FOR_READING, "READY_FOR_READING")
    assert RequestedProcedure.objects.get(pk=exam.pk).qa_problem == ""


def test_completeness_check_run_again_changes_nothing(stack, ris_env, tmp_path):
    scan = Scan(stack, tmp_path / "out", images=1)
    scan.complete()
    storescu(stack, scan.files)
    wait_until(lambda: status_of(scan.exam) == ExamStatus.READY_FOR_READING, "READY_FOR_READING")
    for _ in range(2):
        send_task(ris_env, "worklist.tasks.check_completeness", scan.exam.pk)
    send_task(ris_env, "ris.tasks.heartbeat", "after-rerun")
    wait_until(lambda: WorkerHeartbeat.objects.filter(token="after-rerun").exists(), "the reruns to be consumed")
    assert ready_events(scan.exam) == 1


# --- Bad input ----------------------------------------------------------------------------------


def test_instance_with_an_invalid_uid_is_refused_and_nothing_is_written(stack, ris_env, tmp_path):
    bad = ct_file(tmp_path, "1.2.3.../../etc", generate_uid(), generate_uid())
    output = storescu(stack, [bad])
    assert "Success" not in output.split("Received Store Response")[-1], output
    assert not Instance.objects.exists()
    assert not any(Path(ris_env["RIS_STORAGE_DIR"]).rglob("*.dcm"))


def test_unwritable_storage_answers_out_of_resources_and_the_listener_stays_up(ris_env, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the storage directory should be")
    ris_env["RIS_STORAGE_DIR"] = str(blocker)
    register_station("CT1")
    port = int(ris_env["RIS_DICOM_PORT"])
    with running(manage("rundicom"), ris_env, tmp_path / "dicom.log", port):
        file = ct_file(tmp_path / "in", generate_uid(), generate_uid(), generate_uid())
        output = storescu(port, [file])
        assert "Refused: OutOfResources" in output, output
        assert not Instance.objects.exists()
        assert "Received Store Response" in storescu(port, [file])  # still answering


def test_storage_scu_disconnecting_mid_transfer_leaves_nothing_behind(stack, ris_env, tmp_path):
    ae = AE(ae_title="CT1")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", stack, ae_title="RIS")
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    # P-DATA-TF announcing 64 KiB, of which only a few bytes ever come.
    raw.sendall(b"\x04\x00" + (65536).to_bytes(4, "big") + b"\x00\x00\xff\xf0\x01\x03partial")
    raw.shutdown(socket.SHUT_RDWR)
    assoc.abort()
    scan = Scan(stack, tmp_path / "out", images=1)
    assert "Received Store Response (Success)" in storescu(stack, scan.files)
    assert Instance.objects.count() == 1
    assert not list(Path(ris_env["RIS_STORAGE_DIR"]).rglob(".incoming-*"))


# --- IAN (RAD-49) --------------------------------------------------------------------------------


def test_ian_from_the_pacs_makes_the_exam_ready(stack, tmp_path):
    scan = Scan(stack, tmp_path / "out")
    scan.complete()
    status = send_ian(stack, scan.exam.study_instance_uid, scan.series_uid, scan.sop_uids)
    assert status.Status == 0x0000
    wait_until(lambda: status_of(scan.exam) == ExamStatus.READY_FOR_READING, "READY_FOR_READING")
    instance = Instance.objects.get(sop_instance_uid=scan.sop_uids[0])
    assert instance.source == "IAN" and instance.retrieve_ae_title == "PACS"


def test_ian_for_an_unknown_study_is_recorded_unmatched(stack):
    study_uid = generate_uid()
    assert send_ian(stack, study_uid, generate_uid(), [generate_uid()]).Status == 0x0000
    study = Study.objects.get(study_instance_uid=study_uid)
    assert study.requested_procedure is None
    assert AuditEvent.objects.filter(action="study.unmatched").exists()


def test_ian_without_instances_is_refused_with_0121(stack):
    ds = Dataset()
    ds.StudyInstanceUID = generate_uid()
    ds.ReferencedSeriesSequence = []
    ae = AE(ae_title="PACS")
    ae.add_requested_context(InstanceAvailabilityNotification)
    assoc = ae.associate("127.0.0.1", stack, ae_title="RIS")
    status, _ = assoc.send_n_create(ds, InstanceAvailabilityNotification, generate_uid())
    assoc.release()
    assert status.Status == 0x0121


# --- Worker killed mid-task ---------------------------------------------------------------------


def worker_argv() -> list[str]:
    return celery_worker_argv()


def test_worker_killed_while_a_check_waits_still_makes_the_exam_ready_exactly_once(dicom_scp, ris_env, tmp_path):
    register_station("CT1")
    ris_env["RIS_ARRIVAL_QUIET_SECONDS"] = "3"  # the re-check waits in the worker when it dies
    port = dicom_scp[1]
    log = tmp_path / "worker1.log"
    with running(worker_argv(), ris_env, log) as worker:
        wait_until(lambda: "ready" in log.read_text(errors="replace"), "the first worker", 60)
        scan = Scan(port, tmp_path / "out")
        scan.complete()
        storescu(port, scan.files)
        wait_until(lambda: "check_completeness" in log.read_text(errors="replace"), "a check to be received")
        os.killpg(worker.pid, signal.SIGKILL)  # mid-task: the check is reserved, unacknowledged
        worker.wait()
    assert status_of(scan.exam) != ExamStatus.READY_FOR_READING or ready_events(scan.exam) == 1
    with running(worker_argv(), ris_env, tmp_path / "worker2.log"):
        # The broker redelivers what was not acknowledged (RabbitMQ); the sweep finds the rest.
        send_task(ris_env, "worklist.tasks.sweep_arrivals")
        wait_until(lambda: status_of(scan.exam) == ExamStatus.READY_FOR_READING, "READY_FOR_READING")
        send_task(ris_env, "worklist.tasks.sweep_arrivals")
        time.sleep(2)
    assert ready_events(scan.exam) == 1
