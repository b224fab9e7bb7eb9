"""Images that arrive before their order (swf-spec §7, issue 5): DCMTK storescu (or an IAN from
the PACS) delivers a study the RIS cannot match yet; the HL7 order arrives over MLLP later, then
the MPPS. The study is matched to the new exam by Study Instance UID, then accession number,
and the exam becomes READY_FOR_READING. Against `runmllp`, `rundicom` and a real worker."""

from __future__ import annotations

import pytest
from django.db.models.signals import post_save
from pydicom.uid import generate_uid

from ris import workflow
from ris.models import AuditEvent, ExamStatus, RequestedProcedure, Study
from tests.conftest import send_task
from tests.test_arrival_tracking import ct_file, send_ian, status_of, storescu, wait_until
from tests.test_hl7_inbound import msa, orm, send
from tests.test_mpps_scp import HIS, STATION, MppsScu, final, in_progress, performed_series, register_station, step_item
from worklist.arrival import on_exam_created

pytestmark = pytest.mark.live


@pytest.fixture
def stack(mllp_listener, dicom_scp, celery_worker_process, ris_env):
    """HL7 listener, DICOM SCP and a worker; CT1 and PACS are registered AEs."""
    register_station(STATION)
    register_station("PACS")
    return mllp_listener, dicom_scp[1]


def study_of(study_uid: str) -> Study:
    return Study.objects.select_related("requested_procedure").get(study_instance_uid=study_uid)


def perform(port: int, exam: RequestedProcedure, series_uid: str, sop_uids: list[str]) -> None:
    """The modality's MPPS: IN PROGRESS, then COMPLETED listing the instances it sent."""
    uid = generate_uid()
    assert MppsScu(port).create(in_progress([step_item(exam)]), uid).Status == 0x0000
    assert MppsScu(port).set(uid, final(series=[performed_series(series_uid, sop_uids)])).Status == 0x0000


def test_images_stored_before_the_order_are_matched_by_accession_and_the_exam_becomes_ready(stack, tmp_path):
    mllp, dicom = stack
    accession, study_uid, series_uid = "EARLY1", generate_uid(), generate_uid()
    sop_uids = [generate_uid() for _ in range(3)]
    files = [ct_file(tmp_path / "scan", study_uid, series_uid, uid, accession) for uid in sop_uids]
    assert storescu(dicom, files).count("Received Store Response (Success)") == 3
    assert study_of(study_uid).requested_procedure is None  # no order yet: kept, unmatched
    other_uid = generate_uid()  # another patient's early images: not this order's
    storescu(dicom, [ct_file(tmp_path / "other", other_uid, generate_uid(), generate_uid(), "OTHER9")])

    ack = send(mllp, orm(accession=accession, station=STATION, placer="PLEARLY1", msg_id="EARLY1"))
    assert msa(ack)[1] == "AA", ack
    exam = RequestedProcedure.objects.get(accession_number=accession)
    assert exam.study_instance_uid != study_uid  # the RIS gave the order its own Study UID

    wait_until(lambda: study_of(study_uid).requested_procedure == exam, "the early study matched to the new exam")
    matched = AuditEvent.objects.get(action="study.matched", requested_procedure=exam)
    assert matched.detail["study"] == study_uid and matched.detail["arrived_before_order"] is True
    assert study_of(other_uid).requested_procedure is None

    perform(dicom, exam, series_uid, sop_uids)
    wait_until(lambda: status_of(exam) == ExamStatus.READY_FOR_READING, "READY_FOR_READING")
    ready = AuditEvent.objects.get(requested_procedure=exam, action="exam.ready_for_reading")
    assert (ready.detail["expected"], ready.detail["arrived"], ready.detail["extra"]) == (3, 3, 0)


def test_sweep_matches_an_announced_study_by_study_uid_when_the_order_hook_was_missed(stack, ris_env):
    _, dicom = stack
    study_uid, series_uid, sop_uid = generate_uid(), generate_uid(), generate_uid()
    assert send_ian(dicom, study_uid, series_uid, [sop_uid], accession="").Status == 0x0000
    assert study_of(study_uid).requested_procedure is None
    # The order's own hook is lost (as with the broker down at that moment): the sweep finds it.
    post_save.disconnect(sender=RequestedProcedure, dispatch_uid="worklist.arrival_before_order")
    try:
        exam = order_with_study_uid(study_uid)
    finally:
        post_save.connect(on_exam_created, sender=RequestedProcedure, dispatch_uid="worklist.arrival_before_order")
    send_task(ris_env, "worklist.tasks.sweep_arrivals")
    wait_until(lambda: study_of(study_uid).requested_procedure == exam, "the sweep to match the announced study")


def order_with_study_uid(study_uid: str) -> RequestedProcedure:
    """An order whose Study Instance UID the HIS assigned (as in a ZDS segment)."""
    patient = workflow.register_patient(HIS, "PEARLY", "HOSP", workflow.Demographics(family_name="Tran"))
    procedure = workflow.ProcedureRequest(
        modality="CT", procedure_description="CT head", study_instance_uid=study_uid, steps=[]
    )
    order = workflow.place_order(HIS, patient, workflow.OrderRequest(procedures=[procedure]))
    return order.requested_procedures.get()
