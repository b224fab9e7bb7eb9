"""ORU^R01 as built for a signed report (swf-spec §8), read back with hl7apy as a HIS would."""

import pytest
from django.test import override_settings
from hl7apy.parser import parse_message

from reports.oru import build_oru, escape
from ris import workflow
from tests.test_reports_helpers import radiologist, ready_exam

pytestmark = pytest.mark.django_db

NASTY = "Tổn thương |^~\\& ở thùy trán phải.\nKhông có xuất huyết \\F\\ nội sọ."


def signed(final: bool = True, findings: str = "No acute intracranial abnormality.\nVentricles normal.", **kw):
    exam = ready_exam()
    return workflow.sign_report(radiologist(), exam, findings=findings, impression="Normal CT head.", final=final, **kw)


def segments(er7: str) -> dict[str, list[list[str]]]:
    found: dict[str, list[list[str]]] = {}
    for line in er7.split("\r"):
        if line:
            found.setdefault(line[:3], []).append(line.split("|"))
    return found


def test_final_report_is_oru_r01_v251_with_utf8_charset_and_final_status():
    report = signed()
    er7 = build_oru(report, "R1-oru")
    seg = segments(er7)
    msh = seg["MSH"][0]
    assert msh[8] == "ORU^R01^ORU_R01" and msh[9] == "R1-oru" and msh[11] == "2.5.1"
    assert msh[17] == "UNICODE UTF-8"
    obr = seg["OBR"][0]
    exam = report.requested_procedure
    assert obr[18] == exam.accession_number
    assert obr[25] == "F"
    assert obr[24] == "RAD"
    assert obr[32] == "rad01&White&Eva"
    assert obr[2] == f"{exam.order.placer_order_number}^EMR"
    assert obr[3] == f"{exam.order.filler_order_number}^RIS"
    assert seg["ORC"][0][1] == "RE"
    assert {o[11] for o in seg["OBX"]} == {"F"}


def test_findings_are_one_tx_obx_per_line_and_study_uid_is_the_last_obx():
    report = signed()
    obx = segments(build_oru(report, "R1-oru"))["OBX"]
    assert [(o[2], o[3], o[5]) for o in obx] == [
        ("TX", "121070^Findings^DCM", "No acute intracranial abnormality."),
        ("TX", "121070^Findings^DCM", "Ventricles normal."),
        ("TX", "121077^Conclusion^DCM", "Normal CT head."),
        ("ST", "113014^DICOM Study^DCM", report.requested_procedure.study_instance_uid),
    ]


def test_preliminary_report_has_status_p_in_obr_and_every_obx():
    seg = segments(build_oru(signed(final=False), "R1-oru"))
    assert seg["OBR"][0][25] == "P"
    assert {o[11] for o in seg["OBX"]} == {"P"}


def test_correction_after_final_has_status_c_in_obr_and_every_obx():
    report = signed()
    correction = workflow.sign_report(
        radiologist(),
        report.requested_procedure,
        findings="Small old infarct.",
        impression="No acute change.",
        final=True,
    )
    seg = segments(build_oru(correction, "R2-oru"))
    assert seg["OBR"][0][25] == "C"
    assert {o[11] for o in seg["OBX"]} == {"C"}


def test_delimiters_and_vietnamese_in_report_text_are_escaped_and_survive_a_parser():
    report = signed(findings=NASTY)
    er7 = build_oru(report, "R1-oru")
    message = parse_message(er7.replace("\r", "\r"), find_groups=False)
    obx = [s for s in message.children if s.name == "OBX"]
    assert len(obx) == 4  # two findings lines, conclusion, study UID: no delimiter split a segment
    assert obx[0].obx_5.value == escape("Tổn thương |^~\\& ở thùy trán phải.")
    assert "Tổn thương \\F\\\\S\\\\R\\\\E\\\\T\\ ở" in er7
    assert "\\E\\F\\E\\" in er7  # a literal \F\ in the text is not mistaken for an escape


def test_ft_text_type_sends_one_obx_per_section_with_br_line_breaks():
    report = signed()
    with override_settings(RIS_ORU_TEXT_TYPE="FT"):
        obx = segments(build_oru(report, "R1-oru"))["OBX"]
    assert obx[0][2] == "FT"
    assert obx[0][5] == "No acute intracranial abnormality.\\.br\\Ventricles normal."


def test_version_231_option_uses_two_component_message_type():
    report = signed()
    with override_settings(RIS_ORU_VERSION="2.3.1"):
        msh = segments(build_oru(report, "R1-oru"))["MSH"][0]
    assert msh[8] == "ORU^R01" and msh[11] == "2.3.1"


def test_signing_renders_the_oru_payload_into_the_outbox_row_in_the_same_transaction(settings):
    settings.RIS_HIS_MLLP = "127.0.0.1:1"
    report = signed()
    row = report.outbound_messages.get()
    assert row.destination == "oru" and row.status == "PENDING"
    assert row.payload.startswith("MSH|^~\\&|")
    assert f"|{row.message_control_id}|P|2.5.1" in row.payload
