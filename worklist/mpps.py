"""Modality Performed Procedure Step SCP (PS3.4 Annex F; IHE RAD-6 / RAD-7), swf-spec §6.

N-CREATE (IN PROGRESS) links the MPPS to the scheduled steps named in its Scheduled Step
Attributes Sequence (or creates an unscheduled exam) and starts them; N-SET updates it, and
COMPLETED / DISCONTINUED end it with the instances it lists. N-CREATE and N-SET may arrive on
different associations: nothing is kept in the process, the MPPS lives in the database.

Statuses (swf-spec §6 table): 0x0106 N-CREATE not IN PROGRESS or a bad status value;
0x0111 duplicate SOP Instance UID; 0x0112 N-SET of an unknown MPPS; 0x0110 + Error ID A710
N-SET after the final state; 0x0120 / 0x0121 a required attribute absent / empty.

The N-CREATE event is shared with Instance Availability Notification; `dispatch_n_create`
routes on the Affected SOP Class UID (pynetdicom allows one handler per intervention event).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from django.db import close_old_connections, transaction
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from ris import workflow
from ris.models import PerformedStatus, PerformedStep
from ris.timeutil import site_zone
from worklist import mpps_forward, tasks
from worklist.arrival import text_of

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_INVALID_ATTRIBUTE_VALUE = 0x0106
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_DUPLICATE_SOP_INSTANCE = 0x0111
STATUS_NO_SUCH_OBJECT_INSTANCE = 0x0112
STATUS_MISSING_ATTRIBUTE = 0x0120
STATUS_MISSING_ATTRIBUTE_VALUE = 0x0121
# PS3.4 Table F.7.2-2: the one specialised Error ID of the MPPS SOP class.
ERROR_ID_MAY_NO_LONGER_BE_UPDATED = 0xA710
ERROR_COMMENT_MAY_NO_LONGER_BE_UPDATED = "Performed Procedure Step Object may no longer be updated"

MPPS_SOP_CLASS = ModalityPerformedProcedureStep
# Type 1 attributes of the N-CREATE (PS3.4 Table F.7.2-1).
REQUIRED_AT_CREATE = (
    "ScheduledStepAttributesSequence",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "Modality",
    "PerformedProcedureStepStatus",
)
REQUIRED_AT_FINAL = ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")
# Attributes that identify the step; an N-SET may not change them, so changes are ignored
# (the stored values are kept) rather than refused (swf-spec §6 leaves the choice to us).
NOT_SETTABLE = frozenset(
    Tag(keyword)
    for keyword in (
        "SpecificCharacterSet",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "ReferencedPatientSequence",
        "ScheduledStepAttributesSequence",
        "PerformedProcedureStepID",
        "PerformedStationAETitle",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "Modality",
    )
)
FINAL_STATUSES = (PerformedStatus.COMPLETED, PerformedStatus.DISCONTINUED)

# SOP Class UID -> N-CREATE handler; worklist.ian adds Instance Availability Notification.
N_CREATE_HANDLERS: dict[str, Callable[[evt.Event], tuple]] = {}


def failure(status: int, comment: str, error_id: int | None = None) -> Dataset:
    """A status dataset with an Error Comment (0000,0902), at most 64 characters (LO)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    if error_id is not None:
        ds.ErrorID = error_id
    return ds


class Refusal(Exception):
    """A request answered with a failure status; `status` is the dataset to send."""

    def __init__(self, status: int, comment: str, error_id: int | None = None) -> None:
        super().__init__(comment)
        self.status = failure(status, comment, error_id)


def require(ds: Dataset, keywords: tuple[str, ...] | list[str], where: str = "") -> None:
    """0x0120 when a Type 1 attribute is absent, 0x0121 when it is present but empty."""
    for keyword in keywords:
        if keyword not in ds:
            raise Refusal(STATUS_MISSING_ATTRIBUTE, f"{where}{keyword} missing")
        value = ds[keyword].value
        if value is None or value == "" or (ds[keyword].VR == "SQ" and len(value) == 0):
            raise Refusal(STATUS_MISSING_ATTRIBUTE_VALUE, f"{where}{keyword} empty")


def _moment(ds: Dataset, date_keyword: str, time_keyword: str) -> dt.datetime | None:
    """DA + TM in the site's zone (DICOM times carry none), None when absent or invalid."""
    date, time = text_of(ds, date_keyword), text_of(ds, time_keyword).split(".")[0].ljust(6, "0")[:6]
    try:
        return dt.datetime.strptime(date + time, "%Y%m%d%H%M%S").replace(tzinfo=site_zone())
    except ValueError:
        return None


def step_references(ds: Dataset) -> list[workflow.StepReference]:
    return [
        workflow.StepReference(
            study_instance_uid=text_of(item, "StudyInstanceUID"),
            accession_number=text_of(item, "AccessionNumber"),
            requested_procedure_id=text_of(item, "RequestedProcedureID"),
            sps_id=text_of(item, "ScheduledProcedureStepID"),
        )
        for item in ds.ScheduledStepAttributesSequence
    ]


def performed_patient(ds: Dataset) -> workflow.PerformedPatient:
    name = (text_of(ds, "PatientName").split("=")[0].split("^") + [""] * 5)[:5]
    birth = text_of(ds, "PatientBirthDate")
    try:
        birth_date = dt.datetime.strptime(birth, "%Y%m%d").date() if birth else None
    except ValueError:
        birth_date = None
    sex = text_of(ds, "PatientSex").upper()
    return workflow.PerformedPatient(
        patient_id=text_of(ds, "PatientID"),
        issuer=text_of(ds, "IssuerOfPatientID"),
        demographics=workflow.Demographics(
            family_name=name[0],
            given_name=name[1],
            middle_name=name[2],
            name_prefix=name[3],
            name_suffix=name[4],
            birth_date=birth_date,
            sex=sex if sex in ("M", "F", "O") else "",
        ),
    )


def expected_images(ds: Dataset) -> list[workflow.ExpectedImage]:
    """Every instance of the Performed Series Sequence: Referenced Image Sequence and
    Referenced Non-Image Composite SOP Instance Sequence (SR, PR, KOS...)."""
    found = []
    for series in ds.get("PerformedSeriesSequence", []) or []:
        series_uid = text_of(series, "SeriesInstanceUID")
        for keyword in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for ref in series.get(keyword, []) or []:
                uid = text_of(ref, "ReferencedSOPInstanceUID")
                if uid:
                    found.append(workflow.ExpectedImage(series_uid, uid, text_of(ref, "ReferencedSOPClassUID")))
    return found


def discontinuation_reason(ds: Dataset) -> str:
    for item in ds.get("PerformedProcedureStepDiscontinuationReasonCodeSequence", []) or []:
        return text_of(item, "CodeMeaning") or text_of(item, "CodeValue")
    return ""


def to_json(ds: Dataset) -> dict:
    return ds.to_json_dict(bulk_data_threshold=1 << 20)


def calling_actor(event: evt.Event) -> workflow.Actor:
    requestor = event.assoc.requestor
    return workflow.Actor.for_ae(requestor.ae_title.strip(), f"{requestor.address}:{requestor.port}")


# --- N-CREATE ----------------------------------------------------------------------


def handle_n_create(event: evt.Event) -> tuple:
    uid = event.request.AffectedSOPInstanceUID
    ds = event.attribute_list
    require(ds, REQUIRED_AT_CREATE)
    status = text_of(ds, "PerformedProcedureStepStatus")
    if status != PerformedStatus.IN_PROGRESS:
        raise Refusal(STATUS_INVALID_ATTRIBUTE_VALUE, f"PerformedProcedureStepStatus {status!r}: must be IN PROGRESS")
    for index, item in enumerate(ds.ScheduledStepAttributesSequence, 1):
        require(item, ("StudyInstanceUID",), f"ScheduledStepAttributesSequence item {index}: ")
    reply = Dataset()
    if not uid:
        # PS3.7 10.1.5.1.4: the SCP assigns the UID when the SCU leaves it out.
        uid = reply.AffectedSOPInstanceUID = workflow.new_uid()
    if PerformedStep.objects.filter(sop_instance_uid=uid).exists():
        raise Refusal(STATUS_DUPLICATE_SOP_INSTANCE, f"MPPS {uid} already exists")
    actor = calling_actor(event)
    try:
        with transaction.atomic():
            performed = workflow.record_performed_step_started(
                actor,
                uid,
                step_references(ds),
                patient=performed_patient(ds),
                attributes=to_json(ds),
                modality=text_of(ds, "Modality")[:16],
                pps_id=text_of(ds, "PerformedProcedureStepID")[:16],
                description=text_of(ds, "PerformedProcedureStepDescription")[:64],
                started_at=_moment(ds, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
            )
            if mpps_forward.should_forward(actor.name):
                mpps_forward.queue_forward(performed, mpps_forward.N_CREATE, ds)
    except workflow.WorkflowError as exc:
        if exc.code == "duplicate":
            raise Refusal(STATUS_DUPLICATE_SOP_INSTANCE, exc.reason) from exc
        raise Refusal(STATUS_PROCESSING_FAILURE, exc.reason) from exc
    return STATUS_SUCCESS, reply if "AffectedSOPInstanceUID" in reply else None


# --- N-SET ---------------------------------------------------------------------------


def merge(stored: Dataset, modifications: Dataset) -> Dataset:
    """The stored MPPS with the N-SET applied: each attribute sent replaces the stored one
    (a sequence as a whole, swf-spec §6); identifying attributes keep their stored values."""
    for element in modifications:
        if element.tag not in NOT_SETTABLE:
            stored[element.tag] = element
    return stored


def check_final(ds: Dataset, status: str) -> None:
    require(ds, REQUIRED_AT_FINAL)
    if status == PerformedStatus.COMPLETED:
        require(ds, ("PerformedSeriesSequence",))
        for index, series in enumerate(ds.PerformedSeriesSequence, 1):
            require(series, ("SeriesInstanceUID", "ProtocolName"), f"PerformedSeriesSequence item {index}: ")


def handle_n_set(event: evt.Event) -> tuple:
    uid = event.request.RequestedSOPInstanceUID
    performed = PerformedStep.objects.filter(sop_instance_uid=uid).first()
    if performed is None:
        raise Refusal(STATUS_NO_SUCH_OBJECT_INSTANCE, f"no MPPS {uid}")
    if performed.status != PerformedStatus.IN_PROGRESS:
        raise Refusal(
            STATUS_PROCESSING_FAILURE, ERROR_COMMENT_MAY_NO_LONGER_BE_UPDATED, ERROR_ID_MAY_NO_LONGER_BE_UPDATED
        )
    modifications = event.modification_list
    merged = merge(Dataset.from_json(performed.attributes), modifications)
    status = text_of(merged, "PerformedProcedureStepStatus")
    if status not in PerformedStatus.values:
        raise Refusal(STATUS_INVALID_ATTRIBUTE_VALUE, f"PerformedProcedureStepStatus {status!r} is not defined")
    actor = calling_actor(event)
    if status != PerformedStatus.IN_PROGRESS:
        check_final(merged, status)
    try:
        with transaction.atomic():
            if status == PerformedStatus.IN_PROGRESS:
                workflow.update_performed_step(actor, performed, to_json(merged))
                exams = []
            else:
                exams = workflow.record_performed_step_ended(
                    actor,
                    performed,
                    status,
                    expected_images(merged),
                    attributes=to_json(merged),
                    ended_at=_moment(merged, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"),
                    reason=discontinuation_reason(merged)[:200],
                )
            if mpps_forward.should_forward(actor.name):
                mpps_forward.queue_forward(performed, mpps_forward.N_SET, modifications)
        tasks.schedule_completeness_check(e.pk for e in exams if e.status == workflow.E.COMPLETED)
    except workflow.WorkflowError as exc:
        if exc.code == "illegal_transition":
            # Another N-SET ended it first (concurrent associations): same answer as above.
            raise Refusal(
                STATUS_PROCESSING_FAILURE, ERROR_COMMENT_MAY_NO_LONGER_BE_UPDATED, ERROR_ID_MAY_NO_LONGER_BE_UPDATED
            ) from exc
        raise Refusal(STATUS_PROCESSING_FAILURE, exc.reason) from exc
    return STATUS_SUCCESS, None


# --- Binding ------------------------------------------------------------------------------


def answering(handler: Callable[[evt.Event], tuple], what: str) -> Callable[[evt.Event], tuple]:
    """Wrap a DIMSE handler: refusals become their status, anything unexpected a Processing
    Failure with an Error Comment (logged); the listener never dies of a request."""

    def run(event: evt.Event) -> tuple:
        close_old_connections()
        try:
            return handler(event)
        except Refusal as refusal:
            log.warning("%s refused: 0x%04X %s", what, refusal.status.Status, refusal.status.ErrorComment)
            return refusal.status, None
        except Exception as exc:
            log.exception("%s failed", what)
            return failure(STATUS_PROCESSING_FAILURE, f"{what} failed: {type(exc).__name__}"), None
        finally:
            close_old_connections()

    return run


N_CREATE_HANDLERS[str(MPPS_SOP_CLASS)] = answering(handle_n_create, "MPPS N-CREATE")
mpps_n_set = answering(handle_n_set, "MPPS N-SET")


def dispatch_n_create(event: evt.Event) -> tuple:
    handler = N_CREATE_HANDLERS.get(event.request.AffectedSOPClassUID)
    if handler is None:
        return failure(0x0118, "no such SOP class"), None  # 0x0118 No Such SOP Class
    return handler(event)


def dispatch_n_set(event: evt.Event) -> tuple:
    if event.request.RequestedSOPClassUID != str(MPPS_SOP_CLASS):
        return failure(0x0118, "no such SOP class"), None
    return mpps_n_set(event)


def register(ae: AE) -> list[tuple]:
    ae.add_supported_context(MPPS_SOP_CLASS)
    return [(evt.EVT_N_CREATE, dispatch_n_create), (evt.EVT_N_SET, dispatch_n_set)]
