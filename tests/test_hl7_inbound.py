"""HL7 v2 inbound over MLLP (IHE RAD-1, RAD-2, RAD-12, RAD-13), specified against the running
listener (`manage.py runmllp` subprocess) with a plain-socket MLLP client: ACK bytes, database
rows and worklist steps. Message files under tests/data/hl7/ are shaped like real senders."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from hl7.models import InboundMessage, ResponseMode, SenderProfile
from ris import workflow
from ris.models import (
    AuditEvent,
    ExamStatus,
    ImagingOrder,
    Patient,
    RequestedProcedure,
    ScheduledStep,
    StationRule,
    StepStatus,
)
from tests.conftest import manage, running

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

DATA = Path(__file__).parent / "data" / "hl7"
VT, FS, CR = b"\x0b", b"\x1c", b"\r"


# --- a plain-socket MLLP peer -----------------------------------------------------------------


class Peer:
    """An independent MLLP sender: raw socket, TCP_NODELAY, reads until <FS><CR>."""

    def __init__(self, address: tuple[str, int], timeout: float = 20.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> bytes:
        while FS + CR not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the listener")
            self.buffer += chunk
        frame, _, self.buffer = self.buffer.partition(FS + CR)
        assert frame.startswith(VT)
        return frame[1:]

    def send(self, message: bytes) -> bytes:
        self.send_raw(VT + message + FS + CR)
        return self.read_frame()

    def closed_by_listener(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def send(address, message: bytes | str, encoding: str = "utf-8") -> str:
    data = message if isinstance(message, bytes) else message.replace("\n", "\r").encode(encoding)
    peer = Peer(address)
    try:
        return peer.send(data).decode(encoding, errors="replace")
    finally:
        peer.close()


def segment(ack: str, name: str) -> list[str]:
    return next(s for s in ack.split("\r") if s.startswith(name + "|")).split("|")


def msa(ack: str) -> list[str]:
    return segment(ack, "MSA")


def data_file(name: str) -> bytes:
    return (DATA / name).read_bytes()


MSH_ORM = "MSH|^~\\&|HIS|HOSP|RIS|RAD|20261126101500||ORM^O01|{id}|P|2.3.1"
MSH_ADT = "MSH|^~\\&|HIS|HOSP|RIS|RAD|20261126101500||ADT^{event}|{id}|P|2.5.1||||||UNICODE UTF-8"


def obr(values: dict[int, str]) -> str:
    return "OBR|" + "|".join(values.get(i, "") for i in range(1, max(values) + 1))


def orm(
    control: str = "NW",
    placer: str = "PL1",
    msg_id: str = "M1",
    start: str = "20261127090000",
    modality: str = "CT",
    accession: str = "ACC1",
    station: str = "",
    pid: str = "PID|||P1^^^HOSP||DOE^JANE||19800101|F",
    status: str = "SC",
    code: str = "^^^P1^CT head^LOCAL",
) -> str:
    orc = f"ORC|{control}|{placer}^HIS|||{status}||^^^{start}^^R|||||||||||{station}"
    lines = [
        MSH_ORM.format(id=msg_id),
        pid,
        orc,
        obr({1: "1", 2: placer + "^HIS", 4: code, 18: accession, 24: modality}),
    ]
    return "\r".join(line for line in lines if line) + "\r"


# --- orders (RAD-2 / RAD-13) ------------------------------------------------------------------


def test_orm_v231_with_zds_lands_on_the_worklist_with_mapped_fields(shared_mllp_listener):
    ack = send(shared_mllp_listener, data_file("orm_o01_v231_zds.hl7"), "latin-1")
    assert msa(ack)[1:3] == ["AA", "ORM-231-0001"]
    exam = RequestedProcedure.objects.select_related("order__patient").get(accession_number="ACC231")
    assert exam.status == ExamStatus.SCHEDULED
    assert exam.study_instance_uid == "1.2.826.0.1.3680043.10.1451.231.1"
    assert (exam.requested_procedure_id, exam.procedure_code, exam.procedure_description) == (
        "RP231",
        "CTHEAD",
        "CT Schädel",
    )
    assert exam.order.patient.dicom_name == "Müller^Jürgen^Karl"
    assert exam.order.placer_order_number == "PL231" and exam.order.placer_issuer == "HIS"
    assert exam.order.priority == "STAT"
    assert exam.order.referring_physician == "Schmidt^Anna^^Dr."
    assert exam.order.admission_id == "V998"
    step = exam.scheduled_steps.get()
    assert (step.sps_id, step.modality, step.station_ae_title, step.status) == ("SPS231", "CT", "CT01", "SCHEDULED")
    assert step.protocol_codes == [{"code": "P1", "meaning": "CT Kopf nativ", "scheme": "LOCAL"}]
    assert step.performing_physician == "TECH^TOM"
    assert step.start.isoformat() == "2026-11-27T09:00:00+00:00"


def test_omi_v251_with_two_ipc_gives_one_exam_with_two_steps_in_utf8(shared_mllp_listener):
    ack = send(shared_mllp_listener, data_file("omi_o23_v251_ipc.hl7"))
    assert msa(ack)[1] == "AA", ack
    exam = RequestedProcedure.objects.get(accession_number="ACC251A")
    assert exam.accession_issuer == "BVCR"
    assert exam.study_instance_uid == "1.2.826.0.1.3680043.10.1451.251.1"
    assert exam.order.patient.dicom_name == "Nguyễn^Thị Đào^^Bà"
    assert exam.order.reason == "Đau đầu kéo dài"
    assert exam.order.pregnancy_status == 3
    steps = list(exam.scheduled_steps.order_by("sps_id"))
    assert [(s.sps_id, s.station_ae_title, s.station_name, s.location) for s in steps] == [
        ("SPS251A1", "MR01", "MR1", "PHONG MR 1"),
        ("SPS251A2", "MR01", "MR1", "PHONG MR 1"),
    ]
    assert [s.protocol_codes[0]["code"] for s in steps] == ["T1", "DWI"]
    assert steps[0].start.isoformat() == "2026-11-27T14:30:00+00:00"


def test_escapes_are_undone_before_storing(shared_mllp_listener):
    ack = send(shared_mllp_listener, data_file("orm_o01_escapes.hl7"), "ascii")
    assert msa(ack)[1] == "AA", ack
    order = ImagingOrder.objects.get(placer_order_number="PLESC")
    assert order.medical_alerts == "a|b^c&d~e\\fA\nline 2"
    assert order.patient.family_name == "O^Brien"


def test_two_orc_groups_with_one_placer_number_are_one_order_with_two_exams(shared_mllp_listener):
    ack = send(shared_mllp_listener, data_file("orm_o01_two_procedures.hl7"), "ascii")
    assert msa(ack)[1] == "AA", ack
    order = ImagingOrder.objects.get(placer_order_number="PLTWO")
    assert sorted(order.requested_procedures.values_list("accession_number", flat=True)) == ["ACCTWO1", "ACCTWO2"]


def test_ris_assigns_accession_rp_sps_and_study_uid_when_absent(shared_mllp_listener):
    ack = send(shared_mllp_listener, orm(accession=""))
    assert msa(ack)[1] == "AA", ack
    exam = RequestedProcedure.objects.get()
    assert exam.accession_number.startswith("A") and len(exam.accession_number) <= 16
    assert exam.study_instance_uid.startswith("1.2.826.0.1.3680043.10.1451.")
    assert exam.requested_procedure_id and exam.scheduled_steps.get().sps_id


def test_station_comes_from_the_first_matching_rule_when_the_order_names_none(shared_mllp_listener):
    StationRule.objects.create(priority=20, modality="CT", station_ae_title="CT_ANY")
    StationRule.objects.create(priority=10, modality="CT", procedure_code="P9", station_ae_title="CT_P9")
    StationRule.objects.create(priority=5, modality="CT", station_ae_title="CT_OFF", enabled=False)
    assert msa(send(shared_mllp_listener, orm()))[1] == "AA"
    assert ScheduledStep.objects.get().station_ae_title == "CT_ANY"


def test_explicit_station_in_orc18_wins_over_rules(shared_mllp_listener):
    StationRule.objects.create(modality="CT", station_ae_title="CT_ANY")
    assert msa(send(shared_mllp_listener, orm(station="CT07")))[1] == "AA"
    assert ScheduledStep.objects.get().station_ae_title == "CT07"


def test_no_matching_rule_leaves_the_station_for_a_scheduler(shared_mllp_listener):
    StationRule.objects.create(modality="MR", station_ae_title="MR01")
    assert msa(send(shared_mllp_listener, orm()))[1] == "AA"
    assert ScheduledStep.objects.get().station_ae_title == ""


def test_order_without_start_time_waits_as_ordered(shared_mllp_listener):
    assert msa(send(shared_mllp_listener, orm(start="")))[1] == "AA"
    assert RequestedProcedure.objects.get().status == ExamStatus.ORDERED


def test_cancel_removes_the_step_from_the_worklist(shared_mllp_listener):
    send(shared_mllp_listener, orm())
    ack = send(shared_mllp_listener, orm(control="CA", msg_id="M2", status="CA"))
    assert msa(ack)[1] == "AA", ack
    assert RequestedProcedure.objects.get().status == ExamStatus.CANCELLED
    assert ScheduledStep.objects.get().status == StepStatus.CANCELLED


def test_cancel_after_mpps_in_progress_is_refused_with_AE(shared_mllp_listener):
    send(shared_mllp_listener, orm())
    step = ScheduledStep.objects.get()
    workflow.start_performed_step(workflow.Actor.for_ae("CT1"), "1.2.3.4.5", [step])
    ack = send(shared_mllp_listener, orm(control="CA", msg_id="M2", status="CA"))
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ERR")[1].startswith("ORC^1^1^206&")
    assert RequestedProcedure.objects.get().status == ExamStatus.IN_PROGRESS


def test_cancel_of_an_unknown_order_is_AE_unknown_key_at_orc2(shared_mllp_listener):
    ack = send(shared_mllp_listener, orm(control="CA", placer="NOPE", status="CA"))
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ERR")[1].startswith("ORC^1^2^204&")


def test_discontinue_stops_an_exam_in_progress(shared_mllp_listener):
    send(shared_mllp_listener, orm())
    workflow.start_performed_step(workflow.Actor.for_ae("CT1"), "1.2.3.4.6", [ScheduledStep.objects.get()])
    ack = send(shared_mllp_listener, orm(control="DC", msg_id="M2", status="CA"))
    assert msa(ack)[1] == "AA", ack
    assert RequestedProcedure.objects.get().status == ExamStatus.DISCONTINUED


def test_change_moves_time_modality_and_station_and_procedure(shared_mllp_listener):
    send(shared_mllp_listener, orm())
    ack = send(
        shared_mllp_listener,
        orm(control="XO", msg_id="M2", start="20261128153000", modality="MR", station="MR02", code="^^^M1^MR head^L"),
    )
    assert msa(ack)[1] == "AA", ack
    exam = RequestedProcedure.objects.get()
    step = exam.scheduled_steps.get()
    assert (exam.modality, exam.procedure_description, exam.status) == ("MR", "MR head", ExamStatus.SCHEDULED)
    assert (step.modality, step.station_ae_title) == ("MR", "MR02")
    assert step.start.isoformat() == "2026-11-28T15:30:00+00:00"
    assert AuditEvent.objects.filter(action="exam.changed").exists()


def test_change_of_modality_without_station_reruns_the_station_rules(shared_mllp_listener):
    StationRule.objects.create(modality="MR", station_ae_title="MR_RULE")
    send(shared_mllp_listener, orm(station="CT07"))
    send(shared_mllp_listener, orm(control="XO", msg_id="M2", modality="MR"))
    assert ScheduledStep.objects.get().station_ae_title == "MR_RULE"


def test_change_of_an_exam_in_progress_is_refused_with_AE(shared_mllp_listener):
    send(shared_mllp_listener, orm())
    workflow.start_performed_step(workflow.Actor.for_ae("CT1"), "1.2.3.4.7", [ScheduledStep.objects.get()])
    ack = send(shared_mllp_listener, orm(control="XO", msg_id="M2", start="20261128153000"))
    assert msa(ack)[1] == "AE"
    assert "in progress" in msa(ack)[3]


def test_status_change_is_acknowledged_and_audited_without_changing_the_exam(shared_mllp_listener):
    send(shared_mllp_listener, orm())
    ack = send(shared_mllp_listener, orm(control="SC", msg_id="M2", status="IP"))
    assert msa(ack)[1] == "AA", ack
    assert RequestedProcedure.objects.get().status == ExamStatus.SCHEDULED
    assert AuditEvent.objects.filter(action="order.placer_status", detail__placer_status="IP").exists()


def test_new_order_with_known_placer_number_is_AE_duplicate_and_changes_nothing(shared_mllp_listener):
    send(shared_mllp_listener, orm())
    ack = send(shared_mllp_listener, orm(msg_id="M2", accession="ACC2"))
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ERR")[1].startswith("ORC^1^2^205&")
    assert RequestedProcedure.objects.count() == 1


def test_order_without_patient_id_is_AE_required_field_at_pid3(shared_mllp_listener):
    ack = send(shared_mllp_listener, orm(pid="PID|||||DOE^JANE"))
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ERR")[1].startswith("PID^1^3^101&")
    assert not ImagingOrder.objects.exists()


def test_start_time_not_in_hl7_format_is_AE_data_type_at_orc7(shared_mllp_listener):
    ack = send(shared_mllp_listener, orm(start="2026-11-26"))
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ERR")[1].startswith("ORC^1^7^102&")
    assert not ImagingOrder.objects.exists()


def test_unknown_order_control_is_AE_table_value_at_orc1(shared_mllp_listener):
    ack = send(shared_mllp_listener, orm(control="ZZ"))
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ERR")[1].startswith("ORC^1^1^103&")


def test_sender_configured_for_order_responses_gets_orr_o02_with_filler_number(shared_mllp_listener):
    SenderProfile.objects.create(sending_application="ORRHIS", response=ResponseMode.ORDER_RESPONSE)
    ack = send(shared_mllp_listener, orm().replace("|HIS|HOSP|", "|ORRHIS|HOSP|", 1))
    assert segment(ack, "MSH")[8] == "ORR^O02^ORR_O02"
    assert msa(ack)[1] == "AA"
    orc = segment(ack, "ORC")
    order = ImagingOrder.objects.get()
    assert orc[1:4] == ["OK", "PL1^HIS", order.filler_order_number]


def test_order_response_to_a_refused_cancel_says_unable_to_cancel(shared_mllp_listener):
    SenderProfile.objects.create(sending_application="ORRHIS2", response=ResponseMode.ORDER_RESPONSE)
    ack = send(shared_mllp_listener, orm(control="CA", status="CA").replace("|HIS|HOSP|", "|ORRHIS2|HOSP|", 1))
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ORC")[1] == "UC"


def test_omi_sender_configured_for_order_responses_gets_ori_o24(shared_mllp_listener):
    SenderProfile.objects.create(sending_application="ORIEMR", response=ResponseMode.ORDER_RESPONSE)
    ack = send(shared_mllp_listener, data_file("omi_o23_v251_ipc.hl7").replace(b"|EMR|BVCR|", b"|ORIEMR|BVCR|", 1))
    assert segment(ack, "MSH")[8] == "ORI^O24^ORI_O24"
    assert msa(ack)[1] == "AA" and segment(ack, "ORC")[1] == "OK"


def test_protocol_code_from_obr4_components_1_to_3_for_senders_configured_so(shared_mllp_listener):
    SenderProfile.objects.create(sending_application="PRIMHIS", protocol_code_components="1-3")
    message = orm(code="CT1^CT head primary^LOCAL").replace("|HIS|HOSP|", "|PRIMHIS|HOSP|", 1)
    assert msa(send(shared_mllp_listener, message))[1] == "AA"
    assert ScheduledStep.objects.get().protocol_codes[0]["code"] == "CT1"


# --- patients (RAD-1 / RAD-12) ------------------------------------------------------------------


def test_a04_registers_a_patient_with_a_vietnamese_name(shared_mllp_listener):
    ack = send(shared_mllp_listener, data_file("adt_a04_utf8_vietnamese.hl7"))
    assert msa(ack)[1:3] == ["AA", "ADT-A04-0001"]
    patient = Patient.objects.get(patient_id="VN0002")
    assert (patient.family_name, patient.given_name, patient.middle_name) == ("Lê", "Văn Thành", "Minh")
    assert patient.issuer == "BVCR" and patient.sex == "M" and str(patient.birth_date) == "1960-03-15"


def test_a08_in_latin1_updates_the_name_seen_by_the_worklist(shared_mllp_listener):
    send(shared_mllp_listener, data_file("orm_o01_v231_zds.hl7"), "latin-1")
    ack = send(shared_mllp_listener, data_file("adt_a08_latin1.hl7"), "latin-1")
    assert msa(ack)[1] == "AA", ack
    step = ScheduledStep.objects.select_related("requested_procedure__order__patient").get()
    patient = step.requested_procedure.order.patient
    assert patient.family_name == "Müller-Lüdenscheidt" and str(patient.birth_date) == "1970-01-02"
    # The prepared worklist answer (issue 4) already carries the new name.
    assert step.mwl_dataset["00100010"]["Value"][0]["Alphabetic"] == "Müller-Lüdenscheidt^Jürgen^Karl"
    assert AuditEvent.objects.filter(action="patient.updated", patient=patient).exists()


def test_empty_field_keeps_and_hl7_null_clears_a_stored_value(shared_mllp_listener):
    send(shared_mllp_listener, data_file("adt_a04_utf8_vietnamese.hl7"))
    update = MSH_ADT.format(event="A08", id="U1") + '\rPID|1||VN0002^^^BVCR||Lê^Văn Thành||""|\r'
    assert msa(send(shared_mllp_listener, update))[1] == "AA"
    patient = Patient.objects.get(patient_id="VN0002")
    assert patient.birth_date is None and patient.sex == "M" and patient.middle_name == ""


def test_a40_merges_and_the_exams_follow_the_surviving_patient(shared_mllp_listener):
    send(shared_mllp_listener, orm(pid="PID|||VN0099^^^BVCR||Nguyen^Dao||19851224|F"))
    send(shared_mllp_listener, MSH_ADT.format(event="A04", id="R1") + "\rPID|1||VN0001^^^BVCR||Nguyễn^Thị Đào\r")
    ack = send(shared_mllp_listener, data_file("adt_a40_merge.hl7"))
    assert msa(ack)[1] == "AA", ack
    survivor = Patient.objects.get(patient_id="VN0001")
    assert ImagingOrder.objects.get().patient == survivor
    assert Patient.objects.get(patient_id="VN0099").merged_into == survivor
    assert AuditEvent.objects.filter(action="patient.merged", patient=survivor).exists()


def test_a40_naming_an_unknown_patient_is_AE_unknown_key_at_mrg1(shared_mllp_listener):
    ack = send(shared_mllp_listener, data_file("adt_a40_merge.hl7"))
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ERR")[2].startswith("MRG^1^1")
    assert segment(ack, "ERR")[3].startswith("204^")


def test_bad_birth_date_is_AE_data_type_at_pid7(shared_mllp_listener):
    ack = send(shared_mllp_listener, MSH_ADT.format(event="A08", id="B1") + "\rPID|1||X1||A^B||2026-11-26|M\r")
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ERR")[2] == "PID^1^7"
    assert segment(ack, "ERR")[3].startswith("102^")
    assert not Patient.objects.exists()


def test_adt_without_pid3_is_AE_required_field(shared_mllp_listener):
    ack = send(shared_mllp_listener, MSH_ADT.format(event="A01", id="B2") + "\rPID|1||||A^B\r")
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ERR")[3].startswith("101^")


# --- acknowledgments and the journal --------------------------------------------------------------


def test_ack_is_well_formed_hl7_read_by_hl7apy(shared_mllp_listener):
    ack = send(shared_mllp_listener, data_file("adt_a04_utf8_vietnamese.hl7"))
    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.msa.msa_1.to_er7() == "AA"
    assert parsed.msa.msa_2.to_er7() == "ADT-A04-0001"
    assert parsed.msh.msh_5.to_er7() == "HIS" and parsed.msh.msh_6.to_er7() == "BVCR"


@pytest.mark.parametrize(
    ("msh9", "version", "processing", "code", "location"),
    [
        ("ORU^R01", "2.5.1", "P", "200", "MSH^1^9"),
        ("ADT^A99", "2.5.1", "P", "201", "MSH^1^9"),
        ("ADT^A08", "2.1", "P", "203", "MSH^1^12"),
        ("ADT^A08", "2.5.1", "X", "202", "MSH^1^11"),
    ],
)
def test_unsupported_header_values_are_AR_naming_the_msh_field(
    shared_mllp_listener, msh9, version, processing, code, location
):
    message = f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261126||{msh9}|H1|{processing}|{version}\rPID|||1\r"
    ack = send(shared_mllp_listener, message)
    assert msa(ack)[1:3] == ["AR", "H1"]
    # v2.5 ERR-2 location + ERR-3 code, or v2.3-style ERR-1 for older versions.
    assert f"ERR||{location}|{code}^" in ack or f"ERR|{location}^{code}&" in ack


def test_frame_without_msh_is_AR_and_journaled(shared_mllp_listener):
    ack = send(shared_mllp_listener, b"PID|||1\rhello")
    assert msa(ack)[1] == "AR"
    entry = InboundMessage.objects.get()
    assert bytes(entry.raw) == b"PID|||1\rhello" and entry.outcome == "AR"


def test_unknown_character_set_is_AR_at_msh18(shared_mllp_listener):
    ack = send(shared_mllp_listener, "MSH|^~\\&|HIS|HOSP|RIS|RAD|20261126||ADT^A08|C1|P|2.5||||||KLINGON\rPID|||1\r")
    assert msa(ack)[1] == "AR"


def test_invalid_utf8_is_AE_at_msh18_and_nothing_changes(shared_mllp_listener):
    message = (MSH_ADT.format(event="A04", id="U8") + "\rPID|1||X1||").encode() + b"\xff\xfe^A\r"
    ack = send(shared_mllp_listener, message)
    assert msa(ack)[1] == "AE" and "MSH^1^18" in ack
    assert not Patient.objects.exists()


def test_empty_msh18_uses_the_senders_default_charset(shared_mllp_listener):
    SenderProfile.objects.create(sending_application="LATINHIS", default_charset="8859/1")
    message = "MSH|^~\\&|LATINHIS|HOSP|RIS|RAD|20261126||ADT^A04|L1|P|2.3.1\rPID|||L1||Groß^Jörg\r"
    assert msa(send(shared_mllp_listener, message.encode("latin-1"), "latin-1"))[1] == "AA"
    assert Patient.objects.get().family_name == "Groß"


def test_repeated_control_id_gets_the_original_ack_and_changes_nothing(shared_mllp_listener):
    first = send(shared_mllp_listener, orm(accession=""))
    again = send(shared_mllp_listener, orm(accession=""))
    assert again == first
    assert RequestedProcedure.objects.count() == 1
    assert InboundMessage.objects.count() == 2
    assert "repeated MSH-10" in InboundMessage.objects.order_by("pk").last().error


def test_one_control_id_sent_on_two_connections_at_once_gets_one_answer_twice(shared_mllp_listener):
    for n in range(5):
        message = orm(msg_id=f"TWIN{n}", placer=f"PLTWIN{n}", accession=f"ACCTWIN{n}")
        barrier = threading.Barrier(2)

        def send_together(message=message, barrier=barrier) -> str:
            barrier.wait()
            return send(shared_mllp_listener, message)

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: send_together(), range(2)))
        assert msa(answers[0])[1] == "AA" and answers[0] == answers[1], answers
    assert RequestedProcedure.objects.count() == 5
    assert InboundMessage.objects.filter(outcome="AA").count() == 10


def test_same_control_id_from_another_facility_is_a_new_message(shared_mllp_listener):
    send(shared_mllp_listener, orm())
    other = orm(placer="PL2", accession="ACC2").replace("|HIS|HOSP|", "|HIS|CLINIC2|", 1)
    assert msa(send(shared_mllp_listener, other))[1] == "AA"
    assert RequestedProcedure.objects.count() == 2


def test_every_frame_is_journaled_raw_with_peer_and_outcome(shared_mllp_listener):
    raw = data_file("orm_o01_v231_zds.hl7")
    send(shared_mllp_listener, raw)
    entry = InboundMessage.objects.get()
    assert bytes(entry.raw) == raw
    assert (entry.outcome, entry.control_id, entry.message_type) == ("AA", "ORM-231-0001", "ORM^O01")
    assert entry.peer.startswith("127.0.0.1:") and entry.processed_at is not None
    assert bytes(entry.ack).startswith(b"MSH|")


# --- the wire: framing and bad input ----------------------------------------------------------------


def test_many_messages_on_one_connection_are_answered_in_order(shared_mllp_listener):
    peer = Peer(shared_mllp_listener)
    try:
        ids = [f"SEQ{i}" for i in range(20)]
        for i, msg_id in enumerate(ids):
            ack = peer.send(orm(placer=f"PL{i}", msg_id=msg_id, accession=f"ACC{i}").encode()).decode()
            assert msa(ack)[1:3] == ["AA", msg_id]
    finally:
        peer.close()
    assert RequestedProcedure.objects.count() == 20


def test_two_frames_in_one_write_and_a_frame_in_single_bytes_are_both_answered(shared_mllp_listener):
    peer = Peer(shared_mllp_listener)
    try:
        a = VT + orm(placer="PA", msg_id="A", accession="A1").encode() + FS + CR
        b = VT + orm(placer="PB", msg_id="B", accession="B1").encode() + FS + CR
        peer.send_raw(a + b)
        assert [msa(peer.read_frame().decode())[2] for _ in range(2)] == ["A", "B"]
        for byte in VT + orm(placer="PC", msg_id="C", accession="C1").encode() + FS + CR:
            peer.send_raw(bytes([byte]))
        assert msa(peer.read_frame().decode())[2] == "C"
    finally:
        peer.close()


def test_lf_and_crlf_segment_separators_are_accepted(shared_mllp_listener):
    lf = orm(placer="LF", msg_id="LF", accession="LF1").replace("\r", "\n").encode()
    crlf = orm(placer="CRLF", msg_id="CRLF", accession="CRLF1").replace("\r", "\r\n").encode()
    assert msa(send(shared_mllp_listener, lf))[1] == "AA"
    assert msa(send(shared_mllp_listener, crlf))[1] == "AA"
    assert RequestedProcedure.objects.count() == 2


def test_garbage_outside_a_frame_is_journaled_and_the_next_frame_answered(shared_mllp_listener):
    peer = Peer(shared_mllp_listener)
    try:
        peer.send_raw(b"GET / HTTP/1.1\r\n\r\n\x00\xff")
        ack = peer.send(orm().encode()).decode()
        assert msa(ack)[1] == "AA"
    finally:
        peer.close()
    entry = InboundMessage.objects.get(error="bytes outside an MLLP frame")
    assert bytes(entry.raw).startswith(b"GET / HTTP/1.1")


def test_truncated_frame_is_journaled_when_the_peer_leaves(shared_mllp_listener):
    peer = Peer(shared_mllp_listener)
    peer.send_raw(VT + b"MSH|^~\\&|HIS|HOSP|RIS|RAD|2026||ADT^A08|T1|P|2.5\rPID|||")
    peer.close()
    deadline = time.monotonic() + 10
    while not InboundMessage.objects.filter(error="connection closed inside a frame").exists():
        assert time.monotonic() < deadline, "truncated frame not journaled"
        time.sleep(0.1)


def test_ten_megabyte_frame_closes_that_connection_only(shared_mllp_listener):
    other = Peer(shared_mllp_listener)
    big = Peer(shared_mllp_listener)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            big.send_raw(VT + b"MSH|^~\\&|" + b"X" * (10 * 1024 * 1024))
        assert big.closed_by_listener()
        assert msa(other.send(orm().encode()).decode())[1] == "AA"
    finally:
        big.close()
        other.close()
    entry = InboundMessage.objects.get(error__startswith="frame exceeds")
    assert len(bytes(entry.raw)) <= 64 * 1024


def test_many_connections_opened_and_dropped_do_not_stop_the_listener(shared_mllp_listener):
    for _ in range(5000):
        s = socket.create_connection(shared_mllp_listener, timeout=5)
        s.close()
    assert msa(send(shared_mllp_listener, orm()))[1] == "AA"


def test_z_segments_and_unknown_segments_are_ignored(shared_mllp_listener):
    message = orm().rstrip("\r") + "\rZXY|whatever^x|1\rNTE|1||free text\r"
    assert msa(send(shared_mllp_listener, message))[1] == "AA"


def test_hl7send_command_sends_a_file_and_prints_each_ack(shared_mllp_listener, tmp_path):
    import subprocess

    path = tmp_path / "two.hl7"
    path.write_bytes(
        data_file("adt_a04_utf8_vietnamese.hl7").replace(b"\r", b"\n") + b"\n" + data_file("omi_o23_v251_ipc.hl7")
    )
    result = subprocess.run(
        manage("hl7send", str(path), "--to", f"127.0.0.1:{shared_mllp_listener[1]}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("MSA|AA|") == 2


# --- listener settings (their own listener) -------------------------------------------------------


def _listener(ris_env, tmp_path, **extra):
    ris_env.update(extra)
    port = int(ris_env["RIS_MLLP_PORT"])
    return running(manage("runmllp"), ris_env, tmp_path / "mllp.log", port), ("127.0.0.1", port)


def test_idle_connection_is_closed_after_the_idle_timeout(ris_env, tmp_path):
    ctx, address = _listener(ris_env, tmp_path, RIS_MLLP_IDLE_TIMEOUT="1")
    with ctx:
        peer = Peer(address)
        started = time.monotonic()
        assert peer.closed_by_listener()
        assert time.monotonic() - started < 10
        peer.close()


def test_slow_sender_is_cut_off_after_the_frame_timeout(ris_env, tmp_path):
    ctx, address = _listener(ris_env, tmp_path, RIS_MLLP_FRAME_TIMEOUT="1")
    with ctx:
        peer = Peer(address)
        peer.send_raw(VT + b"MSH|^~\\&|")
        assert peer.closed_by_listener()
        peer.close()
    assert InboundMessage.objects.filter(error__startswith="frame not finished").exists()


def test_peer_outside_the_allow_list_is_closed_without_an_answer(ris_env, tmp_path):
    ctx, address = _listener(ris_env, tmp_path, RIS_MLLP_ALLOWED_PEERS="10.0.0.0/8")
    with ctx:
        peer = Peer(address)
        with contextlib.suppress(OSError):
            peer.send_raw(VT + orm().encode() + FS + CR)
        assert peer.closed_by_listener()
        peer.close()
    assert not InboundMessage.objects.exists()


def test_only_senders_with_a_profile_are_accepted_when_so_configured(ris_env, tmp_path):
    SenderProfile.objects.create(sending_application="HIS", sending_facility="HOSP")
    ctx, address = _listener(ris_env, tmp_path, RIS_HL7_KNOWN_SENDERS_ONLY="1")
    with ctx:
        assert msa(send(address, orm()))[1] == "AA"
        stranger = send(
            address, orm(msg_id="X2", placer="PL2", accession="ACC2").replace("|HIS|HOSP|", "|LAB|HOSP|", 1)
        )
    assert msa(stranger)[1:3] == ["AR", "X2"]
    assert segment(stranger, "ERR")[1] == "MSH^1^3^103&Table value not found&HL70357"
    assert "unknown sender LAB (facility HOSP)" in stranger
    assert ImagingOrder.objects.count() == 1
    refused = InboundMessage.objects.get(control_id="X2")
    assert (refused.outcome, refused.sending_application) == ("AR", "LAB")


def test_sender_bound_to_other_addresses_is_refused_with_AR(shared_mllp_listener):
    SenderProfile.objects.create(sending_application="BOUNDHIS", allowed_peers="10.20.0.0/16, 192.168.7.7")
    ack = send(shared_mllp_listener, orm().replace("|HIS|HOSP|", "|BOUNDHIS|HOSP|", 1))
    assert msa(ack)[1] == "AR" and "sender BOUNDHIS (facility HOSP) is not allowed from 127.0.0.1" in ack
    assert not ImagingOrder.objects.exists()
    SenderProfile.objects.create(sending_application="LOCALHIS", allowed_peers="127.0.0.0/8")
    assert msa(send(shared_mllp_listener, orm().replace("|HIS|HOSP|", "|LOCALHIS|HOSP|", 1)))[1] == "AA"


def test_mllp_over_tls_when_certificate_and_key_are_set(ris_env, tmp_path):
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    ctx, address = _listener(ris_env, tmp_path, RIS_MLLP_TLS_CERT=str(cert), RIS_MLLP_TLS_KEY=str(key))
    with ctx:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        with socket.create_connection(address, timeout=20) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(VT + orm().encode() + FS + CR)
            data = b""
            while FS + CR not in data:
                data += tls.recv(65536)
    assert msa(data[1:].decode())[1] == "AA"


def test_several_listener_processes_share_the_port_and_answer_every_connection(ris_env, tmp_path):
    ctx, address = _listener(ris_env, tmp_path, RIS_MLLP_PROCESSES="2")
    with ctx:
        peers = [Peer(address) for _ in range(6)]
        try:
            for i, peer in enumerate(peers):
                ack = peer.send(orm(placer=f"MP{i}", msg_id=f"MP{i}", accession=f"MPA{i}").encode()).decode()
                assert msa(ack)[1:3] == ["AA", f"MP{i}"]
        finally:
            for peer in peers:
                peer.close()
    assert RequestedProcedure.objects.count() == 6


def test_random_frames_on_one_connection_each_get_an_answer(shared_mllp_listener):
    import random

    rng = random.Random(20261126)
    base = orm().encode()
    peer = Peer(shared_mllp_listener)
    try:
        for _ in range(100):
            data = bytearray(base)
            for _ in range(rng.randint(1, 5)):
                at = rng.randrange(len(data))
                data[at : at + rng.randint(0, 20)] = bytes(rng.choice(b'|^~\\&\r\n"AZ09\xc3\xff') for _ in range(3))
            frame = bytes(data).replace(VT, b"").replace(FS, b"")
            assert msa(peer.send(frame).decode("latin-1"))[1] in ("AA", "AE", "AR")
    finally:
        peer.close()


NO_OBR = "\r".join(orm().split("\r")[:3]) + "\r"
LONG_ACCESSION = orm(accession="A" * 17)
BAD_UID = orm().rstrip("\r") + "\rZDS|not-a-uid^^Application^DICOM\r"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (orm(modality=""), "OBR^1^24^101&"),
        (NO_OBR, "ORC^1^1^101&"),
        (MSH_ORM.format(id="X") + "\rPID|||P1\r", "101&"),
        (LONG_ACCESSION, "OBR^1^18^102&"),
        (BAD_UID, "ZDS^1^1^102&"),
        (orm(pid="PID|||P1^^^HOSP||DOE^JANE||19800101|Q"), "PID^1^8^103&"),
    ],
    ids=["no-modality", "nw-without-obr", "no-orc", "accession-too-long", "bad-study-uid", "bad-sex"],
)
def test_content_errors_are_AE_naming_the_field_and_change_nothing(shared_mllp_listener, message, expected):
    ack = send(shared_mllp_listener, message)
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ERR")[1].startswith(expected) or expected in ack
    assert not ImagingOrder.objects.exists()


def test_change_of_an_unknown_exam_of_a_known_order_is_AE_unknown_key_at_obr18(shared_mllp_listener):
    send(shared_mllp_listener, orm())
    ack = send(shared_mllp_listener, orm(control="XO", msg_id="M2", accession="OTHER"))
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ERR")[1].startswith("OBR^1^18^204&")


def test_new_order_reusing_an_accession_number_is_AE_duplicate(shared_mllp_listener):
    send(shared_mllp_listener, orm())
    ack = send(shared_mllp_listener, orm(placer="PL2", msg_id="M2"))
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ERR")[1].startswith("OBR^1^18^205&")
    assert ImagingOrder.objects.count() == 1


def test_merge_without_mrg1_is_AE_required_field(shared_mllp_listener):
    ack = send(shared_mllp_listener, MSH_ADT.format(event="A40", id="G1") + "\rPID|1||VN1\rMRG|\r")
    assert msa(ack)[1] == "AE"
    assert "MRG^1^1" in segment(ack, "ERR")[2]


def test_message_for_a_merged_away_patient_id_is_AE_at_pid3(shared_mllp_listener):
    send(shared_mllp_listener, MSH_ADT.format(event="A04", id="R1") + "\rPID|1||OLD1^^^BVCR||A^B\r")
    send(shared_mllp_listener, MSH_ADT.format(event="A40", id="R2") + "\rPID|1||NEW1^^^BVCR||A^B\rMRG|OLD1^^^BVCR\r")
    ack = send(shared_mllp_listener, MSH_ADT.format(event="A08", id="R3") + "\rPID|1||OLD1^^^BVCR||C^D\r")
    assert msa(ack)[1] == "AE"
    assert segment(ack, "ERR")[2].startswith("PID^1^3")


def test_unusable_delimiters_are_AR(shared_mllp_listener):
    ack = send(shared_mllp_listener, b"MSH|^^^^|HIS|HOSP|RIS|RAD|2026||ADT^A08|D1|P|2.5\rPID|||1\r")
    assert msa(ack)[1] == "AR"


# --- an independent peer: python-hl7's mllp_send (own venv under var/, never in .venv) ----------

PYTHON_HL7_VENV = Path(__file__).resolve().parent.parent / "var" / "python-hl7-venv"


@pytest.fixture(scope="session")
def mllp_send() -> str:
    """python-hl7 0.4.5's `mllp_send`; its package name `hl7` would shadow ours, hence its own venv."""
    import subprocess
    import sys

    tool = PYTHON_HL7_VENV / "bin" / "mllp_send"
    if not tool.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(PYTHON_HL7_VENV)], check=True, capture_output=True)
            subprocess.run(
                [str(PYTHON_HL7_VENV / "bin" / "pip"), "install", "-q", "hl7==0.4.5"],
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"python-hl7 could not be installed: {exc}")
    return str(tool)


def test_python_hl7_mllp_send_gets_an_aa_for_each_message_on_one_connection(shared_mllp_listener, mllp_send, tmp_path):
    import subprocess

    path = tmp_path / "messages.hl7"
    path.write_bytes(
        data_file("adt_a04_utf8_vietnamese.hl7").replace(b"\r", b"\n")
        + data_file("omi_o23_v251_ipc.hl7").replace(b"\r", b"\n")
    )
    result = subprocess.run(
        [mllp_send, "--loose", "-f", str(path), "-p", str(shared_mllp_listener[1]), "127.0.0.1"],
        capture_output=True,
        timeout=60,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(b"MSA|AA|") == 2
    assert RequestedProcedure.objects.filter(accession_number="ACC251A").exists()
    assert Patient.objects.filter(patient_id="VN0002", family_name="Lê").exists()


def test_unreachable_database_is_AR_resend_later_and_the_listener_keeps_answering(ris_env, tmp_path):
    ctx, address = _listener(ris_env, tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/missing/dir/ris.sqlite3")
    with ctx:
        peer = Peer(address)
        try:
            for msg_id in ("D1", "D2"):
                ack = peer.send(orm(msg_id=msg_id).encode()).decode()
                assert msa(ack)[1:3] == ["AR", msg_id]
                assert "resend later" in ack
        finally:
            peer.close()
