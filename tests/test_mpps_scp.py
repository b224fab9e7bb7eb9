"""MPPS SCP (RAD-6 / RAD-7, swf-spec §6), driven by pynetdicom as the modality's MPPS SCU over
real associations against `manage.py rundicom`. Orders are placed through ris.workflow."""

from __future__ import annotations

import datetime as dt
import socket

import pytest
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from ris import workflow
from ris.models import (
    AuditEvent,
    ExamStatus,
    ExpectedInstance,
    OutboundMessage,
    PerformedStep,
    RequestedProcedure,
    StepStatus,
)
from worklist.models import Modality

pytestmark = pytest.mark.live

HIS = workflow.Actor.for_hl7("HIS", "HOSP")
STATION = "CT1"


# --- helpers shared with the arrival tests ------------------------------------------------


def order_exam(accession: str = "", modality: str = "CT", steps: int = 1) -> RequestedProcedure:
    """A SCHEDULED exam placed as the HIS would, with `steps` scheduled steps on CT1."""
    patient = workflow.register_patient(
        HIS, f"PID{generate_uid()[-8:]}", "HOSP", workflow.Demographics(family_name="Nguyen", given_name="An")
    )
    start = timezone.now() + dt.timedelta(hours=1)
    request = workflow.OrderRequest(
        placer_order_number=f"PL{generate_uid()[-10:]}",
        source_application="HIS",
        source_facility="HOSP",
        procedures=[
            workflow.ProcedureRequest(
                modality=modality,
                procedure_code="CTHEAD",
                procedure_description="CT head",
                accession_number=accession,
                steps=[
                    workflow.StepRequest(modality=modality, start=start, station_ae_title=STATION) for _ in range(steps)
                ],
            )
        ],
    )
    return workflow.place_order(HIS, patient, request).requested_procedures.get()


def register_station(ae_title: str = STATION) -> None:
    Modality.objects.get_or_create(ae_title=ae_title, defaults={"modality": "CT"})


def step_item(exam: RequestedProcedure | None, sps_id: str | None = None) -> Dataset:
    item = Dataset()
    item.StudyInstanceUID = exam.study_instance_uid if exam else generate_uid()
    item.ReferencedStudySequence = []
    item.AccessionNumber = exam.accession_number if exam else ""
    item.RequestedProcedureID = exam.requested_procedure_id if exam else ""
    item.RequestedProcedureDescription = exam.procedure_description if exam else ""
    if sps_id is None and exam is not None:
        sps_id = exam.scheduled_steps.first().sps_id
    item.ScheduledProcedureStepID = sps_id or ""
    item.ScheduledProcedureStepDescription = ""
    item.ScheduledProtocolCodeSequence = []
    return item


def in_progress(items: list[Dataset], patient_id: str = "PID1", status: str = "IN PROGRESS") -> Dataset:
    """An N-CREATE attribute list (PS3.4 Table F.7.2-1) with every Type 1 and 2 attribute."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ScheduledStepAttributesSequence = items
    ds.PatientName = "Nguyễn^Thị"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "F"
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = STATION
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20260101"
    ds.PerformedProcedureStepStartTime = "090000"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = "CT head"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def performed_series(series_uid: str, sop_uids: list[str], protocol: str = "HEAD") -> Dataset:
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ProtocolName = protocol
    series.SeriesDescription = "AXIAL"
    series.PerformingPhysicianName = ""
    series.OperatorsName = ""
    series.RetrieveAETitle = ""
    refs = []
    for uid in sop_uids:
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ref.ReferencedSOPInstanceUID = uid
        refs.append(ref)
    series.ReferencedImageSequence = refs
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    return series


def final(status: str = "COMPLETED", series: list[Dataset] | None = None) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20260101"
    ds.PerformedProcedureStepEndTime = "093000"
    ds.PerformedSeriesSequence = series if series is not None else [performed_series(generate_uid(), [])]
    return ds


class MppsScu:
    """The modality side: one association per call, as N-CREATE and N-SET may use different ones."""

    def __init__(self, port: int, calling: str = STATION) -> None:
        self.port, self.calling = port, calling

    def _send(self, what: str, ds: Dataset, uid: str | None) -> Dataset:
        ae = AE(ae_title=self.calling)
        ae.add_requested_context(ModalityPerformedProcedureStep)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="RIS")
        assert assoc.is_established, "association refused"
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if what == "create":
                status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
            else:
                status, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
        finally:
            assoc.release()
        assert status is not None and "Status" in status, "no response"
        return status

    def create(self, ds: Dataset, uid: str | None = None) -> Dataset:
        return self._send("create", ds, uid)

    def set(self, uid: str, ds: Dataset) -> Dataset:
        return self._send("set", ds, uid)


@pytest.fixture
def scu(dicom_scp) -> MppsScu:
    register_station()
    return MppsScu(dicom_scp[1])


def reload(exam: RequestedProcedure) -> RequestedProcedure:
    return RequestedProcedure.objects.get(pk=exam.pk)


# --- N-CREATE -------------------------------------------------------------------------------


def test_n_create_in_progress_starts_the_exam_and_takes_the_step_off_the_worklist(scu):
    exam = order_exam()
    uid = generate_uid()
    assert scu.create(in_progress([step_item(exam)]), uid).Status == 0x0000
    performed = PerformedStep.objects.get(sop_instance_uid=uid)
    assert reload(exam).status == ExamStatus.IN_PROGRESS
    assert exam.scheduled_steps.get().status == StepStatus.STARTED
    assert list(performed.scheduled_steps.all()) == [exam.scheduled_steps.get()]
    assert performed.performed_station_ae_title == STATION and performed.pps_id == "PPS1"
    assert performed.attributes["00100010"]["Value"][0]["Alphabetic"] == "Nguyễn^Thị"  # the full MPPS is kept


def test_cancel_after_mpps_in_progress_is_refused_as_in_progress(scu):
    exam = order_exam()
    scu.create(in_progress([step_item(exam)]), generate_uid())
    with pytest.raises(workflow.WorkflowError) as refused:
        workflow.cancel_exam(HIS, reload(exam))
    assert refused.value.code == "in_progress"


def test_n_create_with_status_other_than_in_progress_is_refused_with_0106(scu):
    exam = order_exam()
    status = scu.create(in_progress([step_item(exam)], status="COMPLETED"), generate_uid())
    assert status.Status == 0x0106
    assert "IN PROGRESS" in status.ErrorComment
    assert reload(exam).status == ExamStatus.SCHEDULED


def test_n_create_with_an_existing_sop_instance_uid_is_refused_with_0111(scu):
    exam = order_exam()
    uid = generate_uid()
    assert scu.create(in_progress([step_item(exam)]), uid).Status == 0x0000
    assert scu.create(in_progress([step_item(exam)]), uid).Status == 0x0111
    assert PerformedStep.objects.filter(sop_instance_uid=uid).count() == 1


def test_n_create_without_a_required_attribute_is_refused_with_0120(scu):
    ds = in_progress([step_item(order_exam())])
    del ds.PerformedProcedureStepID
    status = scu.create(ds, generate_uid())
    assert status.Status == 0x0120
    assert "PerformedProcedureStepID" in status.ErrorComment


def test_n_create_with_an_empty_required_attribute_is_refused_with_0121(scu):
    ds = in_progress([step_item(order_exam())])
    ds.Modality = ""
    assert scu.create(ds, generate_uid()).Status == 0x0121


def test_group_case_starts_and_completes_every_scheduled_step_it_names(scu):
    first, second = order_exam(), order_exam()
    uid = generate_uid()
    assert scu.create(in_progress([step_item(first), step_item(second)]), uid).Status == 0x0000
    assert {reload(first).status, reload(second).status} == {ExamStatus.IN_PROGRESS}
    assert scu.set(uid, final()).Status == 0x0000
    assert {reload(first).status, reload(second).status} == {ExamStatus.COMPLETED}
    assert {s.status for s in PerformedStep.objects.get(sop_instance_uid=uid).scheduled_steps.all()} == {
        StepStatus.COMPLETED
    }


def test_unscheduled_mpps_creates_an_exam_flagged_for_reconciliation(scu):
    uid = generate_uid()
    item = step_item(None, sps_id="")
    assert scu.create(in_progress([item], patient_id="WALKIN1"), uid).Status == 0x0000
    exam = PerformedStep.objects.get(sop_instance_uid=uid).scheduled_steps.get().requested_procedure
    assert exam.unscheduled and exam.needs_reconciliation
    assert exam.status == ExamStatus.IN_PROGRESS
    assert exam.study_instance_uid == item.StudyInstanceUID
    assert exam.order.patient.patient_id == "WALKIN1"
    assert exam.order.patient.given_name == "Thị"


def test_mpps_naming_an_unknown_step_is_kept_as_unscheduled_not_lost(scu):
    uid = generate_uid()
    item = step_item(None, sps_id="NOSUCHSPS")
    item.AccessionNumber = "NOSUCHACC"
    assert scu.create(in_progress([item]), uid).Status == 0x0000
    exam = PerformedStep.objects.get(sop_instance_uid=uid).scheduled_steps.get().requested_procedure
    assert exam.needs_reconciliation
    assert AuditEvent.objects.filter(action="exam.unscheduled", requested_procedure=exam).exists()


def test_mpps_without_sps_id_is_linked_by_study_uid(scu):
    exam = order_exam()
    uid = generate_uid()
    assert scu.create(in_progress([step_item(exam, sps_id="")]), uid).Status == 0x0000
    assert PerformedStep.objects.get(sop_instance_uid=uid).scheduled_steps.get().requested_procedure == exam
    assert not reload(exam).needs_reconciliation


# --- N-SET ----------------------------------------------------------------------------------


def test_n_set_of_an_unknown_mpps_is_refused_with_0112(scu):
    assert scu.set(generate_uid(), final()).Status == 0x0112


def test_n_set_completed_on_another_association_completes_exam_with_expected_instances(scu):
    exam = order_exam()
    uid = generate_uid()
    scu.create(in_progress([step_item(exam)]), uid)
    series_uid, sops = generate_uid(), [generate_uid(), generate_uid()]
    assert MppsScu(scu.port).set(uid, final(series=[performed_series(series_uid, sops)])).Status == 0x0000
    assert reload(exam).status == ExamStatus.COMPLETED
    assert exam.scheduled_steps.get().status == StepStatus.COMPLETED
    assert set(
        ExpectedInstance.objects.filter(performed_step__sop_instance_uid=uid).values_list("sop_instance_uid", flat=True)
    ) == set(sops)


def test_n_set_after_completed_is_refused_with_0110_and_error_id_a710(scu):
    exam = order_exam()
    uid = generate_uid()
    scu.create(in_progress([step_item(exam)]), uid)
    scu.set(uid, final())
    status = scu.set(uid, final("DISCONTINUED"))
    assert status.Status == 0x0110
    assert status.ErrorComment == "Performed Procedure Step Object may no longer be updated"
    assert status.ErrorID == 0xA710
    assert PerformedStep.objects.get(sop_instance_uid=uid).status == "COMPLETED"


def test_n_set_sequence_replaces_the_stored_sequence(scu):
    exam = order_exam()
    uid = generate_uid()
    scu.create(in_progress([step_item(exam)]), uid)
    first, second = generate_uid(), generate_uid()
    update = Dataset()
    update.PerformedSeriesSequence = [performed_series(first, [generate_uid()])]
    assert scu.set(uid, update).Status == 0x0000
    update.PerformedSeriesSequence = [performed_series(second, [generate_uid()])]
    assert scu.set(uid, update).Status == 0x0000
    stored = PerformedStep.objects.get(sop_instance_uid=uid).attributes["00400340"]["Value"]
    assert [item["0020000E"]["Value"][0] for item in stored] == [second]


def test_n_set_cannot_change_the_identifying_attributes(scu):
    exam = order_exam()
    uid = generate_uid()
    scu.create(in_progress([step_item(exam)]), uid)
    update = Dataset()
    update.PatientID = "SOMEONE-ELSE"
    update.PerformedProcedureStepDescription = "CT head and neck"
    assert scu.set(uid, update).Status == 0x0000
    attributes = PerformedStep.objects.get(sop_instance_uid=uid).attributes
    assert attributes["00100020"]["Value"] == ["PID1"]
    assert attributes["00400254"]["Value"] == ["CT head and neck"]


def test_completed_without_end_time_is_refused_with_0121(scu):
    exam = order_exam()
    uid = generate_uid()
    scu.create(in_progress([step_item(exam)]), uid)
    ds = final()
    ds.PerformedProcedureStepEndTime = ""
    status = scu.set(uid, ds)
    assert status.Status == 0x0121
    assert "PerformedProcedureStepEndTime" in status.ErrorComment
    assert reload(exam).status == ExamStatus.IN_PROGRESS


def test_completed_without_performed_series_is_refused_with_0121(scu):
    exam = order_exam()
    uid = generate_uid()
    scu.create(in_progress([step_item(exam)]), uid)
    assert scu.set(uid, final(series=[])).Status == 0x0121
    assert PerformedStep.objects.get(sop_instance_uid=uid).status == "IN PROGRESS"


def test_completed_series_without_protocol_name_is_refused_with_0120(scu):
    exam = order_exam()
    uid = generate_uid()
    scu.create(in_progress([step_item(exam)]), uid)
    series = performed_series(generate_uid(), [])
    del series.ProtocolName
    assert scu.set(uid, final(series=[series])).Status == 0x0120


def test_n_set_with_an_undefined_status_is_refused_with_0106(scu):
    exam = order_exam()
    uid = generate_uid()
    scu.create(in_progress([step_item(exam)]), uid)
    assert scu.set(uid, final("FINISHED")).Status == 0x0106


def test_discontinued_exam_keeps_the_reason_and_can_be_rescheduled(scu):
    exam = order_exam()
    uid = generate_uid()
    scu.create(in_progress([step_item(exam)]), uid)
    ds = final("DISCONTINUED", series=[])
    reason = Dataset()
    reason.CodeValue, reason.CodingSchemeDesignator = "110514", "DCM"
    reason.CodeMeaning = "Incorrect worklist entry selected"
    ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [reason]
    assert scu.set(uid, ds).Status == 0x0000
    assert reload(exam).status == ExamStatus.DISCONTINUED
    assert PerformedStep.objects.get(sop_instance_uid=uid).discontinuation_reason == reason.CodeMeaning
    rescheduled = workflow.schedule_exam(HIS, reload(exam), start=timezone.now() + dt.timedelta(days=1))
    assert rescheduled.status == ExamStatus.SCHEDULED
    assert rescheduled.scheduled_steps.filter(status=StepStatus.SCHEDULED).count() == 1


def test_garbage_between_requests_does_not_stop_the_listener(scu):
    with socket.create_connection(("127.0.0.1", scu.port)) as raw:
        raw.sendall(b"\x01\x00\x00\x00\x00\x10" + b"not an association" * 3)
    exam = order_exam()
    assert scu.create(in_progress([step_item(exam)]), generate_uid()).Status == 0x0000


# --- Status to the HIS (RAD-3) ------------------------------------------------------------


@pytest.fixture
def his_configured(ris_env):
    ris_env["RIS_HIS_MLLP"] = "127.0.0.1:9"


def test_in_progress_and_completed_write_orm_status_messages_to_the_outbox(his_configured, scu):
    exam = order_exam()
    uid = generate_uid()
    scu.create(in_progress([step_item(exam)]), uid)
    scu.set(uid, final())
    rows = list(OutboundMessage.objects.filter(requested_procedure=exam, destination="orm").order_by("id"))
    assert [row.payload.split("\r")[2].split("|")[5] for row in rows] == ["IP", "CM"]
    msh = rows[0].payload.split("\r")[0].split("|")
    assert msh[8] == "ORM^O01" and msh[9] == rows[0].message_control_id and msh[4:6] == ["HIS", "HOSP"]
    obr = rows[1].payload.split("\r")[3].split("|")
    assert obr[18] == exam.accession_number


def test_no_status_messages_without_a_his_address(scu):
    exam = order_exam()
    uid = generate_uid()
    scu.create(in_progress([step_item(exam)]), uid)
    scu.set(uid, final())
    assert not OutboundMessage.objects.filter(requested_procedure=exam, destination="orm").exists()


def test_a_further_mpps_for_a_completed_step_reopens_the_exam(scu):
    exam = order_exam()
    first, second = generate_uid(), generate_uid()
    scu.create(in_progress([step_item(exam)]), first)
    scu.set(first, final())
    assert scu.create(in_progress([step_item(exam)]), second).Status == 0x0000  # the append case
    assert reload(exam).status == ExamStatus.IN_PROGRESS
    assert scu.set(second, final()).Status == 0x0000
    assert reload(exam).status == ExamStatus.COMPLETED
