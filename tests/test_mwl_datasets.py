"""Prepared worklist answers (worklist.datasets): built inside the workflow's transaction, every
Type 1/2 return key present, encoded directly exactly as pydicom would read them back."""

import datetime as dt
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode

from ris import workflow
from ris.models import ScheduledStep
from worklist.datasets import ResponseBuilder, requested_fields
from worklist.models import AnswerCharacterSet

SYSTEM = workflow.SYSTEM
TYPE_1_AND_2_TOP = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientWeight",
    "ConfidentialityConstraintOnPatientDataDescription", "PatientState", "PregnancyStatus", "MedicalAlerts",
    "Allergies", "SpecialNeeds", "AdmissionID", "CurrentPatientLocation", "AccessionNumber",
    "ReferringPhysicianName", "RequestingPhysician", "RequestedProcedureID", "RequestedProcedureDescription",
    "RequestedProcedureCodeSequence", "StudyInstanceUID", "ReferencedStudySequence", "ReferencedPatientSequence",
    "RequestedProcedurePriority", "PatientTransportArrangements", "ScheduledProcedureStepSequence",
]  # fmt: skip
TYPE_1_AND_2_SPS = [
    "ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime", "Modality",
    "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence",
    "ScheduledProcedureStepID", "ScheduledStationName", "ScheduledProcedureStepLocation", "PreMedication",
    "RequestedContrastAgent",
]  # fmt: skip


@pytest.fixture
def step(db) -> ScheduledStep:
    patient = workflow.register_patient(
        SYSTEM, "P1", "HOSP", workflow.Demographics(family_name="Nguyễn", given_name="Thị Đào", sex="F")
    )
    request = workflow.OrderRequest(
        referring_physician="Müller^Jürgen",
        procedures=[
            workflow.ProcedureRequest(
                modality="CT",
                accession_number="A1",
                procedure_code="CTHEAD",
                procedure_description="CT head",
                steps=[
                    workflow.StepRequest(
                        modality="CT",
                        start=dt.datetime(2025, 1, 2, 9, 30, tzinfo=dt.UTC),
                        station_ae_title="CT1",
                        protocol_codes=[{"code": "P1", "scheme": "LOCAL", "meaning": "Head"}],
                    )
                ],
            )
        ],
    )
    exam = workflow.place_order(SYSTEM, patient, request).requested_procedures.get()
    return exam.scheduled_steps.get()


def test_answer_is_prepared_in_the_transaction_that_schedules_the_step(step):
    stored = ScheduledStep.objects.get(pk=step.pk).mwl_dataset
    assert stored["00100010"]["Value"] == [{"Alphabetic": "Nguyễn^Thị Đào"}]
    assert stored["00400100"]["Value"][0]["00400002"]["Value"] == ["20250102"]


def test_every_type_1_and_2_return_key_is_present(step):
    stored = ScheduledStep.objects.get(pk=step.pk).mwl_dataset
    ds = Dataset.from_json(stored)
    assert [k for k in TYPE_1_AND_2_TOP if k not in ds] == []
    assert [k for k in TYPE_1_AND_2_SPS if k not in ds.ScheduledProcedureStepSequence[0]] == []


def test_cancelled_step_answer_is_rebuilt_with_its_status(step):
    workflow.cancel_exam(SYSTEM, step.requested_procedure)
    stored = ScheduledStep.objects.get(pk=step.pk).mwl_dataset
    assert stored["00400100"]["Value"][0]["00400020"]["Value"] == ["CANCELLED"]


def identifier(full_sps: bool) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = ""
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PregnancyStatus = None
    ds.ReferringPhysicianName = ""
    ds.RequestedProcedureCodeSequence = []
    ds.StudyInstanceUID = ""
    item = Dataset()
    if not full_sps:
        item.ScheduledProcedureStepStartTime = ""
        item.ScheduledProtocolCodeSequence = []
    ds.ScheduledProcedureStepSequence = [item]
    ds.PatientComments = ""  # a key we keep no value for: returned zero-length
    return ds


@pytest.mark.parametrize("charset", [AnswerCharacterSet.UTF8, AnswerCharacterSet.LATIN1, AnswerCharacterSet.ASCII])
@pytest.mark.parametrize("implicit_vr", [True, False])
@pytest.mark.parametrize("full_sps", [True, False])
def test_direct_encoding_decodes_to_the_same_dataset_pydicom_would_write(step, charset, implicit_vr, full_sps):
    stored = ScheduledStep.objects.get(pk=step.pk).mwl_dataset
    builder = ResponseBuilder(requested_fields(identifier(full_sps)), charset)
    expected = builder.build(stored)
    decoded = decode(BytesIO(builder.encode(stored, implicit_vr)), implicit_vr, True)
    assert decoded.to_json_dict() == expected.to_json_dict()
    assert decoded.get("SpecificCharacterSet") == expected.get("SpecificCharacterSet")


def test_ascii_answer_transliterates_vietnamese_and_german(step):
    stored = ScheduledStep.objects.get(pk=step.pk).mwl_dataset
    ds = Dataset()
    ds.PatientName = ""
    ds.ReferringPhysicianName = ""
    answer = ResponseBuilder(requested_fields(ds), AnswerCharacterSet.ASCII).build(stored)
    assert (str(answer.PatientName), str(answer.ReferringPhysicianName)) == ("Nguyen^Thi Dao", "Muller^Jurgen")
    assert "SpecificCharacterSet" not in answer


def command_sets() -> list[Dataset]:
    from pynetdicom.dimse_messages import C_FIND_RSP, C_STORE_RQ, N_CREATE_RSP
    from pynetdicom.dimse_primitives import C_FIND, C_STORE, N_CREATE

    find = C_FIND()
    find.MessageIDBeingRespondedTo = 7
    find.AffectedSOPClassUID = "1.2.840.10008.5.1.4.31"
    find.Status = 0xFF00
    failure = C_FIND()
    failure.MessageIDBeingRespondedTo = 65535
    failure.AffectedSOPClassUID = "1.2.840.10008.5.1.4.31"
    failure.Status = 0xC000
    failure.ErrorComment = "ScheduledProcedureStepStartDate: bad"
    failure.OffendingElement = [0x00400002]
    store = C_STORE()
    store.MessageID = 3
    store.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    store.AffectedSOPInstanceUID = "1.2.3.4.5"
    store.Priority = 2
    store.MoveOriginatorApplicationEntityTitle = "MOVER"
    store.MoveOriginatorMessageID = 1
    create = N_CREATE()
    create.MessageIDBeingRespondedTo = 1
    create.AffectedSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    create.AffectedSOPInstanceUID = "1.2.3"
    create.Status = 0x0000
    messages = []
    for cls, primitive in ((C_FIND_RSP, find), (C_FIND_RSP, failure), (C_STORE_RQ, store), (N_CREATE_RSP, create)):
        message = cls()
        message.primitive_to_message(primitive)
        messages.append(message.command_set)
    return messages


@pytest.mark.parametrize("index", range(4))
def test_command_sets_are_encoded_byte_for_byte_as_pydicom_does(index):
    from pynetdicom.dsutils import encode

    from worklist.datasets import encode_command_set

    command_set = command_sets()[index]
    assert encode_command_set(command_set) == encode(command_set, True, True)


def c_store_responses() -> list:
    from pynetdicom.dimse_primitives import C_STORE

    cases = [
        {"Status": 0x0000},
        {"Status": 0xB000, "ErrorComment": "coerced"},
        {"Status": 0xA700, "ErrorComment": "storage unavailable (ENOSPC)"},
        {"Status": 0xA900, "ErrorComment": "", "OffendingElement": [0x00080018, 0x0020000D]},
        {"Status": 0xC000, "OffendingElement": 0x00080018, "AffectedSOPInstanceUID": None},
        {"Status": 0x0000, "AffectedSOPClassUID": None},
    ]
    responses = []
    for case in cases:
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = 65535
        rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        rsp.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.123"  # odd length: padded
        for keyword, value in case.items():
            setattr(rsp, keyword, value)
        responses.append(rsp)
    return responses


@pytest.mark.parametrize("index", range(6))
def test_c_store_responses_are_encoded_byte_for_byte_as_pynetdicom_does(index):
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dsutils import encode

    from worklist.datasets import encode_c_store_response

    rsp = c_store_responses()[index]
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert encode_c_store_response(rsp) == encode(message.command_set, True, True)


def test_a_c_store_response_it_cannot_encode_is_left_to_pynetdicom():
    from worklist.datasets import encode_c_store_response

    rsp = c_store_responses()[2]
    rsp.ErrorComment = "không ghi được"
    with pytest.raises(ValueError):
        encode_c_store_response(rsp)


def c_store_request_message(**fields):
    """A C-STORE-RQ as pynetdicom encodes it, decoded back into a DIMSE message."""
    from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
    from pynetdicom.dimse_primitives import C_STORE

    request = C_STORE()
    request.MessageID, request.Priority = 7, 2
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    request.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.123"
    request.DataSet = BytesIO(b"\x08\x00\x18\x00\x04\x00\x00\x001.23")
    for keyword, value in fields.items():
        setattr(request, keyword, value)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    received = DIMSEMessage()
    for pdata in message.encode_msg(1, 16382):
        received.decode_msg(pdata)
    return received


PRIMITIVE_FIELDS = ("MessageID", "Priority", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "MoveOriginatorMessageID")


@pytest.mark.parametrize("fields", [{}, {"Priority": 0, "MessageID": 65535}, {"AffectedSOPInstanceUID": "1.2.3.44"}])
def test_c_store_requests_are_read_as_pynetdicom_reads_them(fields):
    from pynetdicom.dimse_messages import DIMSEMessage

    from worklist import reactor
    from worklist.datasets import decode_c_store_request

    message = c_store_request_message(**fields)
    assert decode_c_store_request(message.encoded_command_set.getvalue()) is not None  # the fast path
    fast, stock = reactor.message_to_primitive(message), DIMSEMessage.message_to_primitive(message)
    assert [getattr(fast, name) for name in PRIMITIVE_FIELDS] == [getattr(stock, name) for name in PRIMITIVE_FIELDS]
    assert (fast.DataSet, fast._context_id) == (stock.DataSet, stock._context_id) == (message.data_set, 1)


def test_a_c_store_request_out_of_the_plain_case_is_left_to_pynetdicom():
    from worklist.datasets import decode_c_store_request

    moved = c_store_request_message(MoveOriginatorApplicationEntityTitle="MOVER", MoveOriginatorMessageID=3)
    assert decode_c_store_request(moved.encoded_command_set.getvalue()) is None
    encoded = c_store_request_message().encoded_command_set.getvalue()
    assert decode_c_store_request(encoded) is not None
    assert decode_c_store_request(encoded[:-3]) is None  # cut short
    several = encoded.replace(b"1.2.826.0.1.3680043.8.498.123\x00", b"1.2.826.0.1.3680043.8.498\\123\x00")
    assert len(several) == len(encoded) and decode_c_store_request(several) is None
