"""The Modality Worklist SCP (IHE RAD-5) over real sockets against `manage.py rundicom`.

DCMTK findscu -W is the independent SCU; pynetdicom is used where findscu cannot express a
request (C-CANCEL at a chosen point, identifiers findscu refuses to build, ISO_IR 100 bytes).
Data is created through ris.workflow, as HL7 or the UI would.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from ris import workflow
from ris.timeutil import site_zone
from tests.conftest import MWL_TEST_TIME_ZONE, manage, require_tool, running
from worklist.models import AnswerCharacterSet, Modality, ModalityAlias

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def site_time_zone(settings):
    """The test process reads and writes local times in the zone the shared SCP runs in."""
    settings.RIS_TIME_ZONE = MWL_TEST_TIME_ZONE


@pytest.fixture
def site_env(ris_env) -> dict[str, str]:
    """ris_env for a listener of our own, in the same site time zone."""
    ris_env["RIS_TIME_ZONE"] = MWL_TEST_TIME_ZONE
    return ris_env


@pytest.fixture
def hl7_listener(site_env, tmp_path):
    port = int(site_env["RIS_MLLP_PORT"])
    with running(manage("runmllp"), site_env, tmp_path / "mllp.log", port):
        yield "127.0.0.1", port


SYSTEM = workflow.SYSTEM
SPS = "ScheduledProcedureStepSequence[0]"
RETURN_KEYS = [
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    f"{SPS}.Modality",
    f"{SPS}.ScheduledStationAETitle",
    f"{SPS}.ScheduledProcedureStepStartDate",
    f"{SPS}.ScheduledProcedureStepStartTime",
    f"{SPS}.ScheduledProcedureStepID",
]


def at(day: str, hhmm: str) -> dt.datetime:
    """A local start time at the site (RIS_TIME_ZONE)."""
    return dt.datetime.strptime(day + hhmm, "%Y%m%d%H%M").replace(tzinfo=site_zone())


def patient(pid: str, family: str, given: str = "", birth: dt.date | None = None, sex: str = ""):
    demographics = workflow.Demographics(family_name=family, given_name=given, birth_date=birth, sex=sex)
    return workflow.register_patient(SYSTEM, pid, "HOSP", demographics)


def exam(pat, accession: str, start: dt.datetime | None, modality: str = "CT", station: str = "CT1", **step):
    request = workflow.OrderRequest(
        referring_physician=step.pop("referring", ""),
        procedures=[
            workflow.ProcedureRequest(
                modality=modality,
                accession_number=accession,
                procedure_description=f"{modality} exam {accession}",
                requested_procedure_id=f"RP{accession}",
                steps=[
                    workflow.StepRequest(
                        modality=modality,
                        start=start,
                        station_ae_title=station,
                        sps_id=f"SPS{accession}",
                        description=f"{modality} step {accession}",
                        **step,
                    )
                ],
            )
        ],
    )
    return workflow.place_order(SYSTEM, pat, request).requested_procedures.get()


def findscu(port: int, tmp_path: Path, keys: list[str], calling: str = "CT1", extra: tuple = ()) -> tuple:
    """Run DCMTK findscu -W; returns (responses as datasets, findscu's log text)."""
    out = tmp_path / f"rsp-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    argv = [require_tool("findscu"), "-W", "-v", "-X", "-od", str(out), "-aet", calling, "-aec", "RIS"]
    argv += [*extra, "127.0.0.1", str(port)]
    for key in keys:
        argv += ["-k", key]
    result = subprocess.run(argv, capture_output=True, timeout=60, env={"TCP_NODELAY": "1"})
    log = (result.stdout + result.stderr).decode("latin-1")
    responses = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return responses, log


def query(port: int, tmp_path: Path, *matching_keys: str, calling: str = "CT1") -> list[Dataset]:
    """findscu with the usual return keys plus these matching keys (keyword=value)."""
    names = {k.split("=")[0] for k in matching_keys}
    keys = [k for k in RETURN_KEYS if k not in names] + list(matching_keys)
    responses, log = findscu(port, tmp_path, keys, calling)
    assert "Received Final Find Response (Success)" in log, log[-2000:]
    return responses


def accessions(responses: list[Dataset]) -> list[str]:
    return sorted(r.AccessionNumber for r in responses)


@pytest.fixture
def ct1(transactional_db):
    return Modality.objects.create(ae_title="CT1", modality="CT")


def pynetdicom_find(port: int, identifier: Dataset, calling: str = "CT1", cancel_after: int | None = None):
    """(statuses, identifiers) of one C-FIND sent with pynetdicom; optionally C-CANCEL."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="RIS")
    assert assoc.is_established
    statuses, identifiers = [], []
    try:
        responses = assoc.send_c_find(identifier, ModalityWorklistInformationFind, msg_id=7)
        for status, ident in responses:
            statuses.append(status)
            identifiers.append(ident)
            if cancel_after and len(statuses) == cancel_after:
                assoc.send_c_cancel(7, query_model=ModalityWorklistInformationFind)
    finally:
        assoc.release()
    return statuses, identifiers


def mwl_identifier(**top) -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    for name, value in top.items():
        setattr(ds, name, value)
    if "ScheduledProcedureStepSequence" not in top:
        item = Dataset()
        item.Modality = ""
        item.ScheduledProcedureStepStartDate = ""
        ds.ScheduledProcedureStepSequence = [item]
    return ds


# --- Matching by key, through findscu ------------------------------------------------


def test_query_by_patient_id_returns_only_that_patients_step(shared_dicom_scp, ct1, tmp_path):
    exam(patient("P1", "DOE", "JOHN"), "A1", at("20250102", "0900"))
    exam(patient("P2", "ROE", "JANE"), "A2", at("20250102", "0930"))
    responses = query(shared_dicom_scp[1], tmp_path, "PatientID=P1")
    assert accessions(responses) == ["A1"]
    assert str(responses[0].PatientName) == "DOE^JOHN"


def test_universal_query_returns_every_visible_step_with_one_sps_item_each(shared_dicom_scp, ct1, tmp_path):
    pat = patient("P1", "DOE", "JOHN")
    exam(pat, "A1", at("20250102", "0900"))
    exam(pat, "A2", at("20250103", "0900"), modality="MR", station="MR1")
    responses = query(shared_dicom_scp[1], tmp_path)
    assert accessions(responses) == ["A1", "A2"]
    assert all(len(r.ScheduledProcedureStepSequence) == 1 for r in responses)


def test_modality_and_station_single_value_matching(shared_dicom_scp, ct1, tmp_path):
    pat = patient("P1", "DOE")
    exam(pat, "A1", at("20250102", "0900"), modality="CT", station="CT1")
    exam(pat, "A2", at("20250102", "1000"), modality="MR", station="MR1")
    exam(pat, "A3", at("20250102", "1100"), modality="CT", station="CT2")
    assert accessions(query(shared_dicom_scp[1], tmp_path, f"{SPS}.Modality=CT")) == ["A1", "A3"]
    assert accessions(query(shared_dicom_scp[1], tmp_path, f"{SPS}.ScheduledStationAETitle=CT2")) == ["A3"]


def test_date_range_crossing_days_with_time_is_one_combined_range(shared_dicom_scp, ct1, tmp_path):
    pat = patient("P1", "DOE")
    exam(pat, "EARLY", at("20250105", "0800"))
    exam(pat, "IN1", at("20250105", "1100"))
    exam(pat, "NIGHT", at("20250106", "0200"))
    exam(pat, "IN2", at("20250107", "1700"))
    exam(pat, "LATE", at("20250107", "1900"))
    responses = query(
        shared_dicom_scp[1],
        tmp_path,
        f"{SPS}.ScheduledProcedureStepStartDate=20250105-20250107",
        f"{SPS}.ScheduledProcedureStepStartTime=1000-1800",
    )
    assert accessions(responses) == ["IN1", "IN2", "NIGHT"]


@pytest.mark.parametrize(
    "date_key, expected",
    [("20250106", ["D6"]), ("-20250105", ["D5"]), ("20250106-", ["D6", "D7"]), ("20250105-20250106", ["D5", "D6"])],
)
def test_date_single_value_and_open_ranges(shared_dicom_scp, ct1, tmp_path, date_key, expected):
    pat = patient("P1", "DOE")
    for day in ("5", "6", "7"):
        exam(pat, f"D{day}", at(f"2025010{day}", "0530"))  # 22:30 UTC the day before
    assert (
        accessions(query(shared_dicom_scp[1], tmp_path, f"{SPS}.ScheduledProcedureStepStartDate={date_key}"))
        == expected
    )


def test_time_without_date_matches_that_time_of_day_on_every_day(shared_dicom_scp, ct1, tmp_path):
    pat = patient("P1", "DOE")
    exam(pat, "M1", at("20250105", "0800"))
    exam(pat, "M2", at("20250106", "0815"))
    exam(pat, "PM", at("20250106", "1400"))
    responses = query(shared_dicom_scp[1], tmp_path, f"{SPS}.ScheduledProcedureStepStartTime=0700-0900")
    assert accessions(responses) == ["M1", "M2"]


def test_accession_number_wildcards_are_case_sensitive(shared_dicom_scp, ct1, tmp_path):
    pat = patient("P1", "DOE")
    exam(pat, "ACC10", at("20250102", "0900"))
    exam(pat, "ACC11", at("20250102", "0900"))
    exam(pat, "ACC200", at("20250102", "0900"))
    exam(pat, "acc12", at("20250102", "0900"))
    assert accessions(query(shared_dicom_scp[1], tmp_path, "AccessionNumber=ACC1?")) == ["ACC10", "ACC11"]
    assert accessions(query(shared_dicom_scp[1], tmp_path, "AccessionNumber=ACC*")) == ["ACC10", "ACC11", "ACC200"]


def test_list_of_study_instance_uids(shared_dicom_scp, ct1, tmp_path):
    pat = patient("P1", "DOE")
    uids = [exam(pat, f"U{i}", at("20250102", "0900")).study_instance_uid for i in range(3)]
    responses = query(shared_dicom_scp[1], tmp_path, f"StudyInstanceUID={uids[0]}\\{uids[2]}")
    assert accessions(responses) == ["U0", "U2"]


def test_requested_procedure_id_and_sps_id_single_value(shared_dicom_scp, ct1, tmp_path):
    pat = patient("P1", "DOE")
    exam(pat, "X1", at("20250102", "0900"))
    exam(pat, "X2", at("20250102", "0900"))
    assert accessions(query(shared_dicom_scp[1], tmp_path, "RequestedProcedureID=RPX2")) == ["X2"]
    assert accessions(query(shared_dicom_scp[1], tmp_path, f"{SPS}.ScheduledProcedureStepID=SPSX1")) == ["X1"]


def test_birth_date_range_and_sex(shared_dicom_scp, ct1, tmp_path):
    exam(patient("P1", "OLD", birth=dt.date(1940, 5, 1), sex="F"), "B1", at("20250102", "0900"))
    exam(patient("P2", "YOUNG", birth=dt.date(2001, 5, 1), sex="M"), "B2", at("20250102", "0900"))
    assert accessions(query(shared_dicom_scp[1], tmp_path, "PatientBirthDate=-19991231")) == ["B1"]
    assert accessions(query(shared_dicom_scp[1], tmp_path, "PatientSex=M")) == ["B2"]


def test_performing_physician_name_matching_is_case_insensitive(shared_dicom_scp, ct1, tmp_path):
    pat = patient("P1", "DOE")
    exam(pat, "T1", at("20250102", "0900"), performing_physician="TECH^TOM")
    exam(pat, "T2", at("20250102", "0900"), performing_physician="OTHER^ANN")
    responses = query(shared_dicom_scp[1], tmp_path, f"{SPS}.ScheduledPerformingPhysicianName=tech*")
    assert accessions(responses) == ["T1"]


def test_sequence_matching_requires_all_item_keys_to_match_the_same_step(shared_dicom_scp, ct1, tmp_path):
    pat = patient("P1", "DOE")
    exam(pat, "CTDAY2", at("20250102", "0900"), modality="CT")
    exam(pat, "MRDAY2", at("20250102", "0900"), modality="MR", station="MR1")
    exam(pat, "CTDAY3", at("20250103", "0900"), modality="CT")
    responses = query(
        shared_dicom_scp[1], tmp_path, f"{SPS}.Modality=CT", f"{SPS}.ScheduledProcedureStepStartDate=20250102"
    )
    assert accessions(responses) == ["CTDAY2"]


# --- Return keys ----------------------------------------------------------------------


def test_only_requested_keys_are_returned_and_type_2_keys_are_present_when_empty(shared_dicom_scp, ct1, tmp_path):
    exam(patient("P1", "DOE"), "A1", at("20250102", "0930"))
    keys = ["PatientID", "PatientBirthDate", "ReferringPhysicianName", f"{SPS}.ScheduledProcedureStepStartTime"]
    responses, _ = findscu(shared_dicom_scp[1], tmp_path, keys)
    (r,) = responses
    assert {e.keyword for e in r} == {
        "PatientID",
        "PatientBirthDate",
        "ReferringPhysicianName",
        "ScheduledProcedureStepSequence",
    }
    assert r.PatientBirthDate == "" and r.ReferringPhysicianName == ""
    assert [e.keyword for e in r.ScheduledProcedureStepSequence[0]] == ["ScheduledProcedureStepStartTime"]
    assert r.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime == "093000"


def test_empty_sps_sequence_returns_the_whole_scheduled_step(shared_dicom_scp, ct1, tmp_path):
    exam(patient("P1", "DOE"), "A1", at("20250102", "0930"), protocol_codes=[{"code": "P1", "scheme": "L"}])
    responses, _ = findscu(shared_dicom_scp[1], tmp_path, ["PatientID", "ScheduledProcedureStepSequence"])
    item = responses[0].ScheduledProcedureStepSequence[0]
    assert item.Modality == "CT"
    assert item.ScheduledProcedureStepID == "SPSA1"
    assert item.ScheduledProtocolCodeSequence[0].CodeValue == "P1"
    assert "ScheduledPerformingPhysicianName" in item  # Type 2, zero-length


# --- What is visible -------------------------------------------------------------------


def test_cancelled_step_disappears_from_the_next_query(shared_dicom_scp, ct1, tmp_path):
    pat = patient("P1", "DOE")
    keep, gone = exam(pat, "KEEP", at("20250102", "0900")), exam(pat, "GONE", at("20250102", "1000"))
    assert accessions(query(shared_dicom_scp[1], tmp_path)) == ["GONE", "KEEP"]
    workflow.cancel_exam(SYSTEM, gone, reason="patient declined")
    assert accessions(query(shared_dicom_scp[1], tmp_path)) == ["KEEP"]
    assert keep.pk


def test_unscheduled_exam_without_start_time_is_not_on_the_worklist(shared_dicom_scp, ct1, tmp_path):
    exam(patient("P1", "DOE"), "NOSLOT", None)
    assert query(shared_dicom_scp[1], tmp_path) == []


def test_rescheduled_step_is_answered_with_its_new_time_and_station(shared_dicom_scp, ct1, tmp_path):
    moved = exam(patient("P1", "DOE"), "MOVE", at("20250102", "0900"))
    workflow.schedule_exam(SYSTEM, moved, start=at("20250104", "1515"), station_ae_title="CT2")
    (r,) = query(shared_dicom_scp[1], tmp_path)
    item = r.ScheduledProcedureStepSequence[0]
    assert (item.ScheduledProcedureStepStartDate, item.ScheduledProcedureStepStartTime) == ("20250104", "151500")
    assert item.ScheduledStationAETitle == "CT2"


def test_patient_update_is_reflected_in_the_next_answer(shared_dicom_scp, ct1, tmp_path):
    pat = patient("P1", "DOE", "JON")
    exam(pat, "A1", at("20250102", "0900"))
    patient("P1", "DOE", "JOHN")  # ADT^A08 correction
    (r,) = query(shared_dicom_scp[1], tmp_path, "PatientID=P1")
    assert str(r.PatientName) == "DOE^JOHN"


def test_arrived_step_is_hidden_unless_configured_visible(site_env, ct1, tmp_path):
    arrived = exam(patient("P1", "DOE"), "ARR", at("20250102", "0900"))
    workflow.record_patient_arrived(SYSTEM, arrived)
    port = int(site_env["RIS_DICOM_PORT"])
    with running(manage("rundicom"), site_env, tmp_path / "d1.log", port):
        assert query(port, tmp_path) == []
    site_env["RIS_MWL_VISIBLE_STATUSES"] = "SCHEDULED,ARRIVED"
    with running(manage("rundicom"), site_env, tmp_path / "d2.log", port):
        assert accessions(query(port, tmp_path)) == ["ARR"]


# --- Character sets ---------------------------------------------------------------------


def test_vietnamese_name_is_answered_in_utf8_and_matched_without_diacritics(shared_dicom_scp, ct1, tmp_path):
    exam(patient("P1", "Nguyễn", "Thị Đào"), "VN1", at("20250102", "0900"))
    exam(patient("P2", "Trần", "Văn"), "VN2", at("20250102", "0900"))
    (r,) = query(shared_dicom_scp[1], tmp_path, "PatientName=nguyen*")
    assert r.SpecificCharacterSet == "ISO_IR 192"
    assert str(r.PatientName) == "Nguyễn^Thị Đào"


def test_ascii_console_gets_vietnamese_names_transliterated(shared_dicom_scp, tmp_path):
    Modality.objects.create(ae_title="OLDUS", modality="US", answer_character_set=AnswerCharacterSet.ASCII)
    exam(patient("P1", "Nguyễn", "Thị Đào"), "VN1", at("20250102", "0900"), modality="US", station="OLDUS")
    (r,) = query(shared_dicom_scp[1], tmp_path, calling="OLDUS")
    assert "SpecificCharacterSet" not in r
    assert str(r.PatientName) == "Nguyen^Thi Dao"


def test_latin1_console_gets_iso_ir_100_and_transliteration_only_where_latin1_cannot(shared_dicom_scp, tmp_path):
    Modality.objects.create(ae_title="CR1", modality="CR", answer_character_set=AnswerCharacterSet.LATIN1)
    exam(patient("P1", "Müller", "Jürgen"), "DE1", at("20250102", "0900"), modality="CR", station="CR1")
    exam(patient("P2", "Nguyễn", "Văn"), "VN1", at("20250102", "0900"), modality="CR", station="CR1")
    responses = query(shared_dicom_scp[1], tmp_path, calling="CR1")
    names = {r.AccessionNumber: (r.get("SpecificCharacterSet"), str(r.PatientName)) for r in responses}
    assert names == {"DE1": ("ISO_IR 100", "Müller^Jürgen"), "VN1": (None, "Nguyen^Van")}


def test_query_in_iso_ir_100_is_decoded_by_its_own_character_set(shared_dicom_scp, ct1, tmp_path):
    exam(patient("P1", "Müller", "Jürgen"), "DE1", at("20250102", "0900"))
    exam(patient("P2", "Muster", "Max"), "DE2", at("20250102", "0900"))
    identifier = mwl_identifier(SpecificCharacterSet="ISO_IR 100", PatientName="Müller*")
    statuses, identifiers = pynetdicom_find(shared_dicom_scp[1], identifier)
    assert [s.Status for s in statuses] == [0xFF00, 0x0000]
    assert identifiers[0].AccessionNumber == "DE1"


# --- Coercions ---------------------------------------------------------------------------


def test_console_with_station_coercion_gets_only_its_own_steps_when_it_leaves_station_empty(shared_dicom_scp, tmp_path):
    console = Modality.objects.create(ae_title="CT1", modality="CT", station_from_calling_ae=True)
    ModalityAlias.objects.create(modality=console, ae_title="CT1B")
    pat = patient("P1", "DOE")
    exam(pat, "MINE", at("20250102", "0900"), station="CT1")
    exam(pat, "ALIAS", at("20250102", "0900"), station="CT1B")
    exam(pat, "OTHER", at("20250102", "0900"), station="CT9")
    assert accessions(query(shared_dicom_scp[1], tmp_path)) == ["ALIAS", "MINE"]
    assert accessions(query(shared_dicom_scp[1], tmp_path, calling="CT1B")) == ["ALIAS", "MINE"]
    assert accessions(query(shared_dicom_scp[1], tmp_path, f"{SPS}.ScheduledStationAETitle=CT9")) == ["OTHER"]


# --- Statuses and bad input --------------------------------------------------------------


def test_unknown_calling_ae_is_rejected(shared_dicom_scp, ct1, tmp_path):
    _, log = findscu(shared_dicom_scp[1], tmp_path, ["PatientID"], calling="STRANGER")
    assert "Calling AE Title Not Recognized" in log


def test_query_retrieve_level_is_refused_with_a900_and_an_error_comment(shared_dicom_scp, ct1, tmp_path):
    _, log = findscu(shared_dicom_scp[1], tmp_path, ["QueryRetrieveLevel=STUDY", "PatientID"])
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in log  # 0xA900
    statuses, _ = pynetdicom_find(shared_dicom_scp[1], mwl_identifier(QueryRetrieveLevel="STUDY"))
    assert statuses[0].Status == 0xA900
    assert statuses[0].ErrorComment == "Query/Retrieve Level is not allowed in a worklist query"


def test_malformed_date_is_refused_with_c000_naming_the_key(shared_dicom_scp, ct1, tmp_path):
    identifier = mwl_identifier()
    identifier.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = "2025.01.02"
    statuses, _ = pynetdicom_find(shared_dicom_scp[1], identifier)
    (status,) = statuses
    assert status.Status == 0xC000
    assert "ScheduledProcedureStepStartDate" in status.ErrorComment


def test_two_sps_items_are_refused(shared_dicom_scp, ct1, tmp_path):
    identifier = mwl_identifier()
    identifier.ScheduledProcedureStepSequence.append(Dataset())
    identifier.ScheduledProcedureStepSequence[1].Modality = "MR"
    statuses, _ = pynetdicom_find(shared_dicom_scp[1], identifier)
    assert statuses[0].Status == 0xA900
    assert "one item" in statuses[0].ErrorComment


def test_unsupported_optional_key_is_ignored_for_matching_with_ff01(shared_dicom_scp, ct1, tmp_path):
    exam(patient("P1", "DOE"), "A1", at("20250102", "0900"))
    identifier = mwl_identifier(PregnancyStatus=0)  # dcmjs-dimse's template sends "US 0"
    statuses, identifiers = pynetdicom_find(shared_dicom_scp[1], identifier)
    assert [s.Status for s in statuses] == [0xFF01, 0x0000]
    assert identifiers[0].PregnancyStatus is None  # returned, zero-length (unknown)


def test_unknown_specific_character_set_is_refused(shared_dicom_scp, ct1, tmp_path):
    identifier = mwl_identifier(SpecificCharacterSet="ISO_IR 999")
    statuses, _ = pynetdicom_find(shared_dicom_scp[1], identifier)
    assert statuses[0].Status == 0xC000
    assert "Specific Character Set" in statuses[0].ErrorComment


ANSWERS_BEFORE_CANCEL = 1500


def test_c_cancel_stops_the_answer_stream(shared_dicom_scp, ct1, tmp_path):
    pat = patient("P1", "DOE")
    many = [
        workflow.ProcedureRequest(
            modality="CT",
            accession_number=f"C{i:04d}",
            steps=[workflow.StepRequest(modality="CT", start=at("20250102", "0900"), station_ae_title="CT1")],
        )
        for i in range(ANSWERS_BEFORE_CANCEL)
    ]
    workflow.place_order(SYSTEM, pat, workflow.OrderRequest(procedures=many))
    # pynetdicom drops a C-CANCEL that arrives before the SCP starts on the request, so cancel
    # after the first response. The answers must take longer to stream than the C-CANCEL takes to
    # arrive even on a loaded machine (400 were not always enough in CI: the stream had ended).
    statuses, _ = pynetdicom_find(shared_dicom_scp[1], mwl_identifier(), cancel_after=1)
    assert statuses[-1].Status == 0xFE00
    assert len(statuses) < ANSWERS_BEFORE_CANCEL


def test_listener_keeps_answering_after_bad_queries(shared_dicom_scp, ct1, tmp_path):
    exam(patient("P1", "DOE"), "A1", at("20250102", "0900"))
    findscu(shared_dicom_scp[1], tmp_path, ["QueryRetrieveLevel=STUDY"])
    identifier = mwl_identifier(StudyInstanceUID="not-a-uid")
    assert pynetdicom_find(shared_dicom_scp[1], identifier)[0][0].Status == 0xC000
    assert accessions(query(shared_dicom_scp[1], tmp_path)) == ["A1"]


# --- HL7 changes reach the worklist at once ------------------------------------------------


def mllp_send(port: int, message: str) -> str:
    """A plain-socket MLLP sender: one frame, its acknowledgment."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"\x0b" + message.replace("\n", "\r").encode() + b"\x1c\r")
        answer = b""
        while b"\x1c\r" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer.decode(errors="replace")


def orm(control: str, msg_id: str, start: str, station: str) -> str:
    return "\n".join(
        [
            f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20250101080000||ORM^O01|{msg_id}|P|2.3.1",
            "PID|||P77^^^HOSP||TRAN^VAN||19800101|M",
            f"ORC|{control}|PL77^HIS|||SC||^^^{start}^^R|||||||||||{station}",
            "OBR|1|PL77^HIS||^^^CTH^CT head^L||||||||||||||ACC77||||||CT",
        ]
    )


def test_step_changed_by_hl7_xo_is_answered_with_the_change_at_once(shared_dicom_scp, hl7_listener, ct1, tmp_path):
    assert "MSA|AA" in mllp_send(hl7_listener[1], orm("NW", "M1", "20250102090000", "CT1"))
    (before,) = query(shared_dicom_scp[1], tmp_path, "AccessionNumber=ACC77")
    assert before.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime == "090000"
    assert "MSA|AA" in mllp_send(hl7_listener[1], orm("XO", "M2", "20250103143000", "CT2"))
    (after,) = query(shared_dicom_scp[1], tmp_path, "AccessionNumber=ACC77")
    item = after.ScheduledProcedureStepSequence[0]
    assert (item.ScheduledProcedureStepStartDate, item.ScheduledProcedureStepStartTime) == ("20250103", "143000")
    assert item.ScheduledStationAETitle == "CT2"


def test_step_cancelled_by_hl7_ca_disappears_at_once(shared_dicom_scp, hl7_listener, ct1, tmp_path):
    assert "MSA|AA" in mllp_send(hl7_listener[1], orm("NW", "M1", "20250102090000", "CT1"))
    assert len(query(shared_dicom_scp[1], tmp_path, "AccessionNumber=ACC77")) == 1
    assert "MSA|AA" in mllp_send(hl7_listener[1], orm("CA", "M2", "20250102090000", "CT1"))
    assert query(shared_dicom_scp[1], tmp_path, "AccessionNumber=ACC77") == []


# --- Transfer syntaxes and association limits --------------------------------------------------


@pytest.mark.parametrize("proposal", ["-xb", "-xd", "-xi"])
def test_answers_in_every_offered_transfer_syntax(shared_dicom_scp, ct1, tmp_path, proposal):
    exam(patient("P1", "Nguyễn", "Văn"), "TS1", at("20250102", "0900"))
    responses, log = findscu(shared_dicom_scp[1], tmp_path, ["PatientName", "AccessionNumber"], extra=(proposal,))
    assert "Received Final Find Response (Success)" in log, log[-1500:]
    (r,) = responses
    assert (r.AccessionNumber, str(r.PatientName), r.SpecificCharacterSet) == ("TS1", "Nguyễn^Văn", "ISO_IR 192")


def associate_when_free(ae: AE, port: int):
    """Associate, retrying while the server still counts a just-ended connection (for a moment)."""
    for _ in range(20):
        assoc = ae.associate("127.0.0.1", port, ae_title="RIS")
        if assoc.is_established:
            return assoc
        time.sleep(0.1)
    return assoc


def test_associations_beyond_the_limit_are_rejected(site_env, ct1, tmp_path):
    site_env["RIS_DICOM_MAX_ASSOCIATIONS"] = "1"
    port = int(site_env["RIS_DICOM_PORT"])
    with running(manage("rundicom"), site_env, tmp_path / "dicom.log", port):  # probes the port first
        ae = AE(ae_title="CT1")
        ae.add_requested_context(ModalityWorklistInformationFind)
        first = associate_when_free(ae, port)
        try:
            assert first.is_established
            second = ae.associate("127.0.0.1", port, ae_title="RIS")
            assert second.is_rejected
            assert second.acceptor.primitive.diagnostic == 0x02  # local limit exceeded
        finally:
            first.release()
        third = associate_when_free(ae, port)
        assert third.is_established
        third.release()


# --- The remaining optional keys --------------------------------------------------------------


def full_exam(pat, accession: str, tag: str):
    """An exam whose every optional matching column carries `tag`."""
    request = workflow.OrderRequest(
        placer_order_number=f"PL{tag}",
        filler_order_number=f"FI{tag}",
        referring_physician=f"REF^{tag}",
        ordering_physician=f"ORD^{tag}",
        admission_id=f"ADM{tag}",
        patient_location=f"WARD{tag}",
        priority="STAT" if tag == "1" else "ROUTINE",
        procedures=[
            workflow.ProcedureRequest(
                modality="CT",
                accession_number=accession,
                accession_issuer=f"ISS{tag}",
                procedure_description=f"DESC{tag}",
                steps=[
                    workflow.StepRequest(
                        modality="CT",
                        start=at("20250102", "0900"),
                        station_ae_title="CT1",
                        station_name=f"ROOM{tag}",
                        location=f"LOC{tag}",
                        description=f"STEP{tag}",
                    )
                ],
            )
        ],
    )
    return workflow.place_order(SYSTEM, pat, request).requested_procedures.get()


OPTIONAL_KEYS = [
    "IssuerOfPatientID=HOSP1",
    "AdmissionID=ADM1",
    "CurrentPatientLocation=WARD1",
    "RequestedProcedurePriority=STAT",
    "PlacerOrderNumberImagingServiceRequest=PL1",
    "FillerOrderNumberImagingServiceRequest=FI*",
    "ReferringPhysicianName=ref^1",
    "RequestingPhysician=ORD^1",
    "RequestedProcedureDescription=DESC1",
    "IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID=ISS1",
    f"{SPS}.ScheduledStationName=ROOM1",
    f"{SPS}.ScheduledProcedureStepLocation=LOC?",
    f"{SPS}.ScheduledProcedureStepDescription=STEP1",
]


def test_every_optional_matching_key_selects_by_its_own_value(shared_dicom_scp, ct1, tmp_path):
    one = workflow.register_patient(SYSTEM, "P1", "HOSP1", workflow.Demographics(family_name="ONE"))
    two = workflow.register_patient(SYSTEM, "P2", "HOSP2", workflow.Demographics(family_name="TWO"))
    full_exam(one, "K1", "1")
    full_exam(two, "K2", "2")
    expected = {k: ["K1"] for k in OPTIONAL_KEYS}
    expected["FillerOrderNumberImagingServiceRequest=FI*"] = ["K1", "K2"]
    expected[f"{SPS}.ScheduledProcedureStepLocation=LOC?"] = ["K1", "K2"]
    found = {k: accessions(query(shared_dicom_scp[1], tmp_path, k)) for k in OPTIONAL_KEYS}
    assert found == expected


def test_sps_status_key_matches_only_within_the_visible_statuses(shared_dicom_scp, ct1, tmp_path):
    exam(patient("P1", "DOE"), "S1", at("20250102", "0900"))
    assert accessions(query(shared_dicom_scp[1], tmp_path, f"{SPS}.ScheduledProcedureStepStatus=SCHEDULED")) == ["S1"]
    assert query(shared_dicom_scp[1], tmp_path, f"{SPS}.ScheduledProcedureStepStatus=ARRIVED") == []


def test_exact_person_name_mode_is_case_and_accent_sensitive(site_env, ct1, tmp_path):
    exam(patient("P1", "Müller", "Jürgen"), "E1", at("20250102", "0900"))
    exam(patient("P2", "MULLER", "JURGEN"), "E2", at("20250102", "0900"))
    site_env["RIS_MWL_PN_MATCHING"] = "exact"
    port = int(site_env["RIS_DICOM_PORT"])
    with running(manage("rundicom"), site_env, tmp_path / "dicom.log", port):
        identifier = mwl_identifier(SpecificCharacterSet="ISO_IR 192", PatientName="Müller*")
        _, identifiers = pynetdicom_find(port, identifier)
        assert [i.AccessionNumber for i in identifiers if i is not None] == ["E1"]
        assert accessions(query(port, tmp_path, "PatientName=MULLER*")) == ["E2"]


def test_database_trouble_is_answered_with_a700_and_the_listener_carries_on(site_env, tmp_path):
    site_env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}"  # no tables at all
    site_env["RIS_DICOM_ALLOW_ANY_AE"] = "1"
    port = int(site_env["RIS_DICOM_PORT"])
    with running(manage("rundicom"), site_env, tmp_path / "dicom.log", port):
        for _ in range(2):
            statuses, _ = pynetdicom_find(port, mwl_identifier())
            assert statuses[0].Status == 0xA700
            assert statuses[0].ErrorComment.startswith("database unavailable")


def test_a_bare_tcp_probe_does_not_hold_an_association_slot(site_env, ct1, tmp_path):
    site_env["RIS_DICOM_MAX_ASSOCIATIONS"] = "1"
    port = int(site_env["RIS_DICOM_PORT"])
    with running(manage("rundicom"), site_env, tmp_path / "dicom.log", port):
        for _ in range(3):  # what /healthz or a port scanner does
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        ae = AE(ae_title="CT1")
        ae.add_requested_context(ModalityWorklistInformationFind)
        started = time.monotonic()
        assoc = associate_when_free(ae, port)
        assert assoc.is_established
        assoc.release()
        assert time.monotonic() - started < 5  # not the 30 s ACSE timeout
