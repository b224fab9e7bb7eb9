"""How many completeness checks arrivals cost (swf-spec §7, issue 5): images of an exam still
IN_PROGRESS ask for none (its MPPS completion does), and an exam has at most one check queued,
so a PACS that sends one IAN per instance costs a check per quiet period, not one per instance.
Counted from the worker's own log line per check ("exam <id>: <outcome>"), against
`manage.py rundicom` and a real worker; the quiet period is 1 s here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ris.models import AuditEvent, ExamStatus, RequestedProcedure
from tests.test_arrival_tracking import Scan, send_ian, status_of, storescu, wait_until
from tests.test_mpps_scp import register_station

pytestmark = pytest.mark.live


@pytest.fixture
def stack(dicom_scp, celery_worker_process, ris_env):
    register_station("CT1")
    register_station("PACS")
    return dicom_scp[1]


def checks_run(tmp_path: Path, exam: RequestedProcedure) -> list[str]:
    """The outcomes of the completeness checks the worker ran for this exam, in order."""
    marker = f"exam {exam.pk}: "
    log = (tmp_path / "worker.log").read_text(errors="replace")
    return [line.split(marker, 1)[1].split()[0] for line in log.splitlines() if marker in line]


def test_images_of_an_exam_still_in_progress_queue_no_check_its_completion_does(stack, tmp_path):
    scan = Scan(stack, tmp_path / "out")
    assert storescu(stack, scan.files).count("Received Store Response (Success)") == 3
    time.sleep(2.5)  # past the quiet period plus margin, when a check of those arrivals would run
    assert checks_run(tmp_path, scan.exam) == []
    scan.complete()
    wait_until(lambda: status_of(scan.exam) == ExamStatus.READY_FOR_READING, "READY_FOR_READING")
    wait_until(lambda: "ready" in checks_run(tmp_path, scan.exam), "the ready check in the worker log")
    time.sleep(1.5)  # a check still queued would have run by now
    assert len(checks_run(tmp_path, scan.exam)) <= 2  # the MPPS's, and one after the quiet period


def test_one_ian_per_instance_after_completion_costs_one_check_per_quiet_period(stack, tmp_path):
    scan = Scan(stack, tmp_path / "out", images=12)
    scan.complete()
    wait_until(lambda: checks_run(tmp_path, scan.exam) == ["incomplete"], "the MPPS's check")
    started = time.monotonic()
    for sop_uid in scan.sop_uids:  # as a PACS that announces each instance as it stores it
        assert send_ian(stack, scan.exam.study_instance_uid, scan.series_uid, [sop_uid]).Status == 0x0000
    announcing = time.monotonic() - started
    wait_until(lambda: status_of(scan.exam) == ExamStatus.READY_FOR_READING, "READY_FOR_READING")
    wait_until(lambda: "ready" in checks_run(tmp_path, scan.exam), "the ready check in the worker log")
    time.sleep(1.5)  # a check still queued would have run by now
    after_mpps = checks_run(tmp_path, scan.exam)[1:]
    # One check per quiet period (1 s) the announcements took, plus the final one; one per IAN without joining.
    assert len(after_mpps) <= int(announcing) + 3 < len(scan.sop_uids), (announcing, after_mpps)
    assert AuditEvent.objects.filter(requested_procedure=scan.exam, action="exam.ready_for_reading").count() == 1
