"""ORU^R01 radiology report (HL7 v2.5.1, or v2.3.1), built with hl7apy (swf-spec §8).

MSH (MSH-18 UNICODE UTF-8), PID, PV1, ORC (RE), OBR (placer/filler numbers, procedure, exam
time, accession in OBR-18, status time, OBR-25 P/F/C, principal interpreter in OBR-32), then
one OBX per report line (TX) or one per section (FT with \\.br\\ line breaks), each OBX-11 equal
to OBR-25, and a last OBX carrying the Study Instance UID. Free text is HL7-escaped here, so a
report full of |^~\\& reaches the HIS as written.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from ris.models import OutboundMessage, PerformedStep, Report, ReportStatus, RequestedProcedure
from ris.timeutil import to_local

# HL7 table 0123 (result status, OBR-25) and 0085 (observation result status, OBX-11).
RESULT_PRELIMINARY = "P"
RESULT_FINAL = "F"
RESULT_CORRECTED = "C"
RESULT_STATUS = {
    ReportStatus.PRELIMINARY: RESULT_PRELIMINARY,
    ReportStatus.FINAL: RESULT_FINAL,
    ReportStatus.AMENDED: RESULT_CORRECTED,
}
# Report section codes (DICOM CID 7001, scheme DCM), as dcm4chee reads OBX-3.
SECTION_FINDINGS = ("121070", "Findings", "DCM")
SECTION_CONCLUSION = ("121077", "Conclusion", "DCM")
STUDY_UID_CODE = ("113014", "DICOM Study", "DCM")
SUPPORTED_VERSIONS = ("2.5.1", "2.3.1")
# hl7apy escapes a backslash it does not know as an escape sequence, \.br\ included; FT line
# breaks travel as this private-use character and become \.br\ in the finished message.
_LINE_BREAK = "\ue000"
FT_LINE_BREAK = "\\.br\\"


def escape(text: str) -> str:
    """HL7 escape sequences for the default delimiters (v2 §2.7.4); the escape character first."""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


def hl7_time(moment: dt.datetime | None) -> str:
    """HL7 TS in the site's local time (RIS_TIME_ZONE), to the second."""
    local = to_local(moment)
    return local.strftime("%Y%m%d%H%M%S") if local else ""


def text_lines(text: str) -> list[str]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def exam_started_at(exam: RequestedProcedure) -> dt.datetime | None:
    """When the exam was performed (first MPPS start), else its scheduled start."""
    performed = (
        PerformedStep.objects.filter(scheduled_steps__requested_procedure=exam)
        .exclude(started_at=None)
        .order_by("started_at")
        .values_list("started_at", flat=True)
        .first()
    )
    if performed:
        return performed
    return exam.scheduled_steps.exclude(start=None).order_by("start").values_list("start", flat=True).first()


def entity(number: str, issuer: str) -> str:
    """EI: entity id ^ namespace id."""
    return escape(number) + (f"^{escape(issuer)}" if issuer else "")


def interpreter(report: Report) -> str:
    """OBR-32 principal result interpreter, NDL/CM: id & family & given (subcomponents)."""
    user = report.author
    parts = [user.get_username(), user.last_name, user.first_name]
    return "&".join(escape(p) for p in parts).rstrip("&")


def build_oru(report: Report, control_id: str, *, version: str | None = None) -> str:
    """The ORU^R01 for one signed report version, as ER7 text with CR segment ends."""
    version = version or settings.RIS_ORU_VERSION
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"RIS_ORU_VERSION must be one of {SUPPORTED_VERSIONS}, not {version!r}")
    exam = report.requested_procedure
    order = exam.order
    result_status = RESULT_STATUS[report.status]
    message = Message("ORU_R01", version=version, validation_level=VALIDATION_LEVEL.TOLERANT)
    _msh(message, order, control_id, report, version)
    patient_result = message.add_group("ORU_R01_PATIENT_RESULT")
    _patient(patient_result, exam)
    observation_request = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    _orc_obr(observation_request, report, result_status)
    _observations(observation_request, report, result_status)
    return message.to_er7().replace(_LINE_BREAK, FT_LINE_BREAK) + "\r"


def _msh(message: Message, order, control_id: str, report: Report, version: str) -> None:
    msh = message.msh
    msh.msh_3 = escape(settings.RIS_AE_TITLE)
    msh.msh_4 = escape(settings.RIS_FACILITY)
    msh.msh_5 = escape(order.source_application or settings.RIS_HIS_APPLICATION)
    msh.msh_6 = escape(order.source_facility or settings.RIS_HIS_FACILITY)
    msh.msh_7 = hl7_time(report.signed_at)
    msh.msh_9 = "ORU^R01^ORU_R01" if version != "2.3.1" else "ORU^R01"
    msh.msh_10 = control_id
    msh.msh_11 = "P"
    msh.msh_12 = version
    msh.msh_18 = "UNICODE UTF-8"


def _patient(patient_result, exam: RequestedProcedure) -> None:
    patient = exam.order.patient
    group = patient_result.add_group("ORU_R01_PATIENT")
    pid = group.pid
    pid.pid_1 = "1"
    pid.pid_3 = f"{escape(patient.patient_id)}^^^{escape(patient.issuer)}^MR"
    # XPN: family ^ given ^ middle ^ suffix ^ prefix.
    name = [patient.family_name, patient.given_name, patient.middle_name, patient.name_suffix, patient.name_prefix]
    pid.pid_5 = "^".join(escape(p) for p in name).rstrip("^")
    if patient.birth_date:
        pid.pid_7 = patient.birth_date.strftime("%Y%m%d")
    if patient.sex:
        pid.pid_8 = patient.sex
    pv1 = group.add_group("ORU_R01_VISIT").pv1
    pv1.pv1_1 = "1"
    pv1.pv1_2 = "U"  # patient class unknown to the RIS (table 0004)
    if exam.order.patient_location:
        pv1.pv1_3 = escape(exam.order.patient_location)
    if exam.order.admission_id:
        pv1.pv1_19 = escape(exam.order.admission_id)


def _orc_obr(observation_request, report: Report, result_status: str) -> None:
    exam = report.requested_procedure
    order = exam.order
    placer = entity(order.placer_order_number, order.placer_issuer) if order.placer_order_number else ""
    filler = entity(order.filler_order_number, order.filler_issuer)
    orc = observation_request.orc
    orc.orc_1 = "RE"
    if placer:
        orc.orc_2 = placer
    orc.orc_3 = filler
    orc.orc_5 = "CM"
    obr = observation_request.obr
    obr.obr_1 = "1"
    if placer:
        obr.obr_2 = placer
    obr.obr_3 = filler
    code = exam.procedure_code or exam.requested_procedure_id
    scheme = exam.procedure_code_scheme or "L"
    obr.obr_4 = f"{escape(code)}^{escape(exam.procedure_description)}^{escape(scheme)}"
    started = exam_started_at(exam)
    if started:
        obr.obr_7 = hl7_time(started)
    obr.obr_18 = escape(exam.accession_number)
    obr.obr_19 = escape(exam.requested_procedure_id)
    obr.obr_22 = hl7_time(report.signed_at)
    obr.obr_24 = "RAD"
    obr.obr_25 = result_status
    obr.obr_32 = interpreter(report)


def _observations(observation_request, report: Report, result_status: str) -> None:
    text_type = "FT" if settings.RIS_ORU_TEXT_TYPE.upper() == "FT" else "TX"
    values: list[tuple[str, tuple[str, str, str], str]] = []
    for section, text in ((SECTION_FINDINGS, report.findings), (SECTION_CONCLUSION, report.impression)):
        lines = text_lines(text)
        if not lines:
            continue
        if text_type == "FT":
            values.append(("FT", section, _LINE_BREAK.join(escape(line) for line in lines)))
        else:
            values.extend(("TX", section, escape(line)) for line in lines)
    values.append(("ST", STUDY_UID_CODE, report.requested_procedure.study_instance_uid))
    for number, (value_type, code, value) in enumerate(values, start=1):
        obx = observation_request.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(number)
        obx.obx_2 = value_type
        obx.obx_3 = "^".join(code)
        if value:
            obx.obx_5 = value
        obx.obx_11 = result_status
        obx.obx_14 = hl7_time(report.signed_at)


def render_oru(message: OutboundMessage) -> str:
    """Outbox renderer for destination "oru": the payload is fixed when the report is signed."""
    return build_oru(message.report, message.message_control_id)
