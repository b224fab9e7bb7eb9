"""End-to-end tests of the web UI in headless Chromium (issue 7).

Debian's /usr/bin/chromium driven by Playwright against pytest-django's live server, with the
real DICOM SCP as a subprocess and DCMTK findscu / a pynetdicom MPPS SCU as the modality.
Without Chromium these tests skip locally and fail in CI (CI=true).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import subprocess
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.conftest import IN_CI, UI_PASSWORD, require_tool
from tests.test_mpps_scp import performed_series, step_item
from tests.ui_support import local, make_patient, make_procedure, make_room, ready_for_reading, tomorrow
from web import browser as ris_browser
from worklist.scp import SERVICES

# Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still
# plain synchronous code, so Django's async-safety guard is lifted for this module.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = pytest.mark.live

if not ris_browser.chromium_available():
    message = f"{ris_browser.CHROMIUM} not installed (apt-get install chromium): browser tests skipped"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def chromium() -> Iterator:
    with sync_playwright() as playwright:
        browser = ris_browser.launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, live_server, ui_users, settings):
    settings.RIS_UI_POLL_SECONDS = 1
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def log_in(page, live_server, role: str) -> None:
    ris_browser.log_in(page, live_server.url, role, UI_PASSWORD)


@pytest.mark.parametrize(
    ("role", "home", "heading"),
    [
        ("scheduler", "/board/", "Day board"),
        ("technologist", "/technologist/", "Worklist"),
        ("radiologist", "/reading/", "Reading list"),
        ("admin", "/board/", "Day board"),
    ],
)
def test_each_role_logs_in_and_lands_on_its_home_page(page, live_server, role, home, heading):
    log_in(page, live_server, role)
    assert page.url == live_server.url + home
    expect(page.locator("h1")).to_contain_text(heading)
    expect(page.locator(".userbox")).to_contain_text(role)


def test_wrong_password_keeps_the_user_on_the_login_page(page, live_server):
    page.goto(live_server.url + "/login/")
    page.fill("input[name=username]", "scheduler")
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    expect(page.locator(".msg-error")).to_contain_text("Wrong user name or password")


def findscu(port: int, tmp_path, accession: str) -> list[Dataset]:
    out = tmp_path / "findscu"
    out.mkdir()
    argv = [require_tool("findscu"), "-W", "-X", "-od", str(out), "-aet", "CT1", "-aec", "RIS", "127.0.0.1", str(port)]
    for key in (
        f"AccessionNumber={accession}",
        "PatientName",
        "PatientID",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
        "ScheduledProcedureStepSequence[0].Modality",
    ):
        argv += ["-k", key]
    result = subprocess.run(argv, capture_output=True, timeout=60, env={"TCP_NODELAY": "1"})
    assert result.returncode == 0, result.stderr.decode("latin-1")
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


@pytest.mark.skipif("worklist.mwl" not in SERVICES, reason="MWL SCP not available")
def test_order_entered_and_scheduled_in_the_ui_is_on_the_findscu_worklist(page, live_server, dicom_scp, tmp_path):
    make_room("CT1", "CT")
    make_procedure("CTHEAD", "CT", 20, "CT head without contrast")
    make_patient("BN1", "Nguyễn", "Thị", "Đào")
    log_in(page, live_server, "scheduler")

    page.goto(live_server.url + "/orders/new/")
    page.fill("[data-testid=patient-search]", "nguyen thi dao")
    page.click("[data-patient=BN1]")
    page.check("text=CT head without contrast")
    page.click("text=Place order and choose a slot")
    page.wait_for_url(re.compile(r"/exams/[^/]+/schedule/"))
    accession = page.url.rstrip("/").split("/")[-2]

    page.goto(f"{live_server.url}/exams/{accession}/schedule/?room=CT1&day={tomorrow().isoformat()}")
    page.click("[data-slot='09:00']")
    expect(page.locator(".msg-success")).to_contain_text(f"Exam {accession} scheduled in CT1")
    expect(page.locator("#exam-status [data-status]").first).to_have_attribute("data-status", "SCHEDULED")

    [item] = findscu(dicom_scp[1], tmp_path, accession)
    step = item.ScheduledProcedureStepSequence[0]
    assert str(item.PatientName) == "Nguyễn^Đào^Thị"  # family^given^middle
    assert step.ScheduledStationAETitle == "CT1"
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime[:4]) == (
        tomorrow().strftime("%Y%m%d"),
        "0900",
    )


def test_conflicting_slot_is_refused_in_the_browser(page, live_server):
    from tests.ui_support import make_exam

    make_room("CT1", "CT")
    booked = make_exam(start=local(tomorrow(), 9), station="CT1")
    exam = make_exam(make_patient("P2"))
    log_in(page, live_server, "scheduler")
    page.goto(f"{live_server.url}/exams/{exam.accession_number}/schedule/?room=CT1&day={tomorrow().isoformat()}")
    page.fill("form.form input[name=date]", tomorrow().isoformat())
    page.fill("form.form input[name=time]", "09:10")
    page.click("form.form button.primary")
    expect(page.locator(".errorlist")).to_contain_text(f"exam {booked.accession_number}")


def test_clicking_a_free_calendar_cell_books_a_waiting_exam_there(page, live_server):
    from tests.ui_support import make_exam

    make_room("CT1", "CT")
    exam = make_exam(make_patient("P3", "Lý", "Văn", "Tâm"))
    log_in(page, live_server, "scheduler")
    page.goto(f"{live_server.url}/schedule/?day={tomorrow().isoformat()}")
    cell = page.locator(f'[data-free-slot="CT1 {tomorrow().isoformat()} 10:30"]')
    cell.hover()
    expect(cell).to_contain_text("+ 10:30")
    cell.click()
    row = page.locator(f'[data-candidate="{exam.accession_number}"]')
    row.locator("button.primary").click()
    expect(page.locator(".cal-block")).to_contain_text("Lý Văn Tâm")
    step = exam.scheduled_steps.get()
    assert (step.station_ae_title, step.start) == ("CT1", local(tomorrow(), 10, 30))


class MppsModality:
    """A modality reporting MPPS N-CREATE / N-SET over its own associations (pynetdicom)."""

    def __init__(self, port: int, ae_title: str = "CT1") -> None:
        self.port, self.ae_title = port, ae_title

    def _send(self, create: bool, ds: Dataset, uid: str) -> int:
        from pynetdicom import AE
        from pynetdicom.sop_class import ModalityPerformedProcedureStep

        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(ModalityPerformedProcedureStep)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="RIS")
        assert assoc.is_established
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if create:
                status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
            else:
                status, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
        finally:
            assoc.release()
        return status.Status

    def start(self, exam, uid: str) -> int:
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ScheduledStepAttributesSequence = [step_item(exam)]
        ds.PatientName = exam.order.patient.dicom_name
        ds.PatientID = exam.order.patient.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.ReferencedPatientSequence = []
        ds.PerformedProcedureStepID = "PPS1"
        ds.PerformedStationAETitle = self.ae_title
        ds.PerformedStationName = ""
        ds.PerformedLocation = ""
        now = dt.datetime.now()
        ds.PerformedProcedureStepStartDate = now.strftime("%Y%m%d")
        ds.PerformedProcedureStepStartTime = now.strftime("%H%M%S")
        ds.PerformedProcedureStepStatus = "IN PROGRESS"
        ds.PerformedProcedureStepDescription = exam.procedure_description
        ds.PerformedProcedureTypeDescription = ""
        ds.ProcedureCodeSequence = []
        ds.PerformedProcedureStepEndDate = ""
        ds.PerformedProcedureStepEndTime = ""
        ds.Modality = "CT"
        ds.StudyID = ""
        ds.PerformedProtocolCodeSequence = []
        ds.PerformedSeriesSequence = []
        return self._send(True, ds, uid)

    def complete(self, uid: str, sop_uids: list[str]) -> int:
        ds = Dataset()
        ds.PerformedProcedureStepStatus = "COMPLETED"
        now = dt.datetime.now()
        ds.PerformedProcedureStepEndDate = now.strftime("%Y%m%d")
        ds.PerformedProcedureStepEndTime = now.strftime("%H%M%S")
        ds.PerformedSeriesSequence = [performed_series(generate_uid(), sop_uids)]
        return self._send(False, ds, uid)


@pytest.mark.skipif("worklist.mpps" not in SERVICES, reason="MPPS SCP not available")
def test_day_board_and_exam_page_follow_mpps_events_without_reload(page, live_server, dicom_scp):
    from ris.timeutil import site_zone
    from tests.ui_support import make_exam

    make_room("CT1", "CT")
    now = dt.datetime.now(site_zone()).replace(second=0, microsecond=0)
    exam = make_exam(start=now, station="CT1")
    log_in(page, live_server, "scheduler")
    page.goto(live_server.url + "/board/")
    badge = page.locator(f"[data-accession='{exam.accession_number}'] .state [data-status]").first
    expect(badge).to_have_attribute("data-status", "SCHEDULED")

    modality, uid = MppsModality(dicom_scp[1]), generate_uid()
    assert modality.start(exam, uid) == 0x0000
    expect(badge).to_have_attribute("data-status", "IN_PROGRESS")

    page.goto(f"{live_server.url}/exams/{exam.accession_number}/")
    assert modality.complete(uid, [generate_uid(), generate_uid()]) == 0x0000
    expect(page.locator("#exam-status [data-status]").first).to_have_attribute("data-status", "COMPLETED")
    expect(page.locator("[data-testid=images]")).to_contain_text("0 / 2")


def test_radiologist_signs_a_report_and_sees_its_delivery_state(page, live_server, settings):
    settings.RIS_HIS_MLLP = "127.0.0.1:9"  # a configured HIS: the ORU waits in the outbox
    make_room("CT1", "CT")
    from tests.ui_support import make_exam

    exam = ready_for_reading(make_exam(start=local(tomorrow(), 9), station="CT1"))
    log_in(page, live_server, "radiologist")
    page.click(f"[data-accession='{exam.accession_number}'] a.btn")
    page.fill("textarea[name=findings]", "Không thấy tổn thương khu trú.")
    page.fill("textarea[name=impression]", "Bình thường.")
    page.click("button[value=final]")
    expect(page.locator(".msg-success")).to_contain_text("Final report signed")
    version = page.locator("[data-version='1']")
    expect(version.locator("[data-status]").first).to_have_attribute("data-status", "FINAL")
    expect(version.locator("[data-delivery=oru] [data-status]")).to_have_attribute(
        "data-status", re.compile("PENDING|DELIVERED|FAILED")
    )
    expect(page.locator("button[value=addendum]")).to_have_text("Sign addendum")


def test_switching_to_vietnamese_translates_the_whole_ui(page, live_server):
    make_patient("BN9", "Đặng", "Thị", "Hạnh")
    log_in(page, live_server, "scheduler")
    page.select_option("[data-testid=language]", "vi")
    expect(page.locator("h1")).to_contain_text("Bảng trong ngày")
    expect(page.locator("html")).to_have_attribute("lang", "vi")
    page.goto(live_server.url + "/patients/?q=dang hanh")
    expect(page.locator("h1")).to_contain_text("Bệnh nhân")
    expect(page.locator("table")).to_contain_text("Đặng Thị Hạnh")
    expect(page.locator(".mainnav")).to_contain_text("Xếp lịch")
