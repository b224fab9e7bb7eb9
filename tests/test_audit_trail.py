"""The audit trail of access to patient data (issue 9, DICOM PS3.15 A.5 / IHE ATNA): worklist
queries by AE, MPPS, HL7 receipt, report sign-offs and views (UI, API), each an AuditEvent with
who, what, when, from where and outcome; optionally copied to an RFC 5424 syslog collector."""

from __future__ import annotations

import re
import socket

import pytest
from django.test import Client
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from hl7.models import InboundMessage
from ris import workflow
from ris.models import AuditEvent
from tests.conftest import manage, running
from tests.test_hl7_inbound import msa, orm, send
from tests.test_mpps_scp import MppsScu, in_progress, order_exam, register_station, step_item
from tests.test_reports_helpers import radiologist, ready_exam

pytestmark = pytest.mark.live


def worklist_query(port: int, station: str = "CT1") -> int:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="RIS")
    identifier = Dataset()
    identifier.PatientName, identifier.PatientID = "", ""
    step = Dataset()
    step.ScheduledStationAETitle, step.ScheduledProcedureStepStartDate, step.Modality = station, "", ""
    identifier.ScheduledProcedureStepSequence = [step]
    try:
        return sum(1 for status, ds in assoc.send_c_find(identifier, ModalityWorklistInformationFind) if ds is not None)
    finally:
        assoc.release()


def test_worklist_query_is_audited_with_the_calling_ae_address_keys_and_matches(dicom_scp):
    register_station("CT1")
    order_exam()
    order_exam()
    found = worklist_query(dicom_scp[1])
    event = AuditEvent.objects.get(action="worklist.queried")
    assert (event.actor_kind, event.actor, event.source_address, event.outcome) == ("ae", "CT1", "127.0.0.1", "success")
    assert event.detail["matches"] == found == 2
    assert event.detail["keys"]["ScheduledStationAETitle"] == "CT1"


def test_mpps_from_a_modality_is_audited_against_the_exam(dicom_scp):
    register_station("CT1")
    exam = order_exam()
    MppsScu(dicom_scp[1]).create(in_progress([step_item(exam)]))
    events = AuditEvent.objects.filter(requested_procedure=exam, actor="CT1")
    assert events.exists() and all(e.actor_kind == "ae" for e in events)


def test_hl7_message_receipt_is_audited_with_the_sender_address_outcome_and_journal_entry(mllp_listener):
    assert msa(send(mllp_listener, orm(msg_id="AUD-1", placer="PLAUD", accession="ACCAUD")))[1] == "AA"
    event = AuditEvent.objects.get(action="hl7.received")
    assert (event.actor_kind, event.actor, event.source_address, event.outcome) == (
        "hl7",
        "HIS^HOSP",
        "127.0.0.1",
        "success",
    )
    assert (event.detail["answer"], event.detail["control_id"]) == ("AA", "AUD-1")
    journal = InboundMessage.objects.get(pk=event.detail["journal"])
    assert (journal.sending_application, journal.control_id, journal.outcome) == ("HIS", "AUD-1", "AA")


def test_refused_and_unreadable_hl7_frames_are_audited_as_failures(mllp_listener):
    refused = orm(msg_id="AUD-2", placer="PLAUD2", accession="ACCAUD2").replace("ORM^O01", "ORU^R01")
    assert msa(send(mllp_listener, refused))[1] == "AR"
    assert msa(send(mllp_listener, "not HL7 at all"))[1] == "AR"
    events = list(AuditEvent.objects.filter(action="hl7.received").order_by("pk"))
    assert [(e.actor, e.outcome, e.detail["answer"]) for e in events] == [
        ("HIS^HOSP", "failure", "AR"),
        ("127.0.0.1", "failure", "AR"),
    ]


@pytest.mark.django_db(transaction=True)
def test_report_sign_off_is_audited_with_the_radiologist_and_version():
    exam = ready_exam()
    workflow.sign_report(radiologist(), exam, findings="No bleed.", impression="Normal.", final=True)
    event = AuditEvent.objects.get(action="report.signed", requested_procedure=exam)
    assert event.actor == "rad01" and event.user is not None and event.detail["report_version"] == 1


@pytest.mark.django_db(transaction=True)
def test_viewing_an_exam_page_is_audited_with_the_user_and_address(ui_users):
    exam = ready_exam()
    client = Client(REMOTE_ADDR="10.1.2.3")
    client.force_login(ui_users["radiologist"])
    assert client.get(f"/exams/{exam.accession_number}/").status_code == 200
    event = AuditEvent.objects.get(action="patient_data.viewed")
    assert (event.actor, event.source_address, event.requested_procedure) == ("radiologist", "10.1.2.3", exam)
    assert event.patient == exam.order.patient and event.detail["view"] == "exam_detail"


@pytest.mark.django_db(transaction=True)
def test_api_exam_search_is_audited_with_the_token_owner_and_query(ui_users):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=ui_users["radiologist"])
    response = Client().get("/api/exams?patient_id=P1", HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 200
    event = AuditEvent.objects.get(action="patient_data.viewed")
    assert event.user == ui_users["radiologist"] and event.detail["query"] == "patient_id=P1"


@pytest.mark.django_db(transaction=True)
def test_refused_api_request_is_not_recorded_as_a_view():
    assert Client().get("/api/exams", HTTP_AUTHORIZATION="Token nope").status_code == 401
    assert not AuditEvent.objects.filter(action="patient_data.viewed").exists()


RFC5424 = re.compile(rb"^<(\d+)>1 (\S+) (\S+) ris (\d+) (\S+) \[ris@32473 ([^\]]*)\] \xef\xbb\xbf(.*)$", re.S)


def test_audit_events_are_copied_to_an_rfc5424_syslog_collector(ris_env, tmp_path):
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(20)
    ris_env["RIS_AUDIT_SYSLOG"] = f"127.0.0.1:{collector.getsockname()[1]}"
    port = int(ris_env["RIS_MLLP_PORT"])
    with collector, running(manage("runmllp"), ris_env, tmp_path / "mllp.log", port):
        send(("127.0.0.1", port), orm(msg_id="SYS-1", placer="PLSYS", accession="ACCSYS"))
        datagrams = []
        while not any(b"hl7.received" in d for d in datagrams):
            datagrams.append(collector.recv(65536))
    match = RFC5424.match(next(d for d in datagrams if b" hl7.received " in d))
    assert match, datagrams
    assert int(match.group(1)) == 10 * 8 + 5  # authpriv.notice
    assert b'actor="HIS^HOSP" source="127.0.0.1"' in match.group(6) and b'outcome="success"' in match.group(6)
    assert b'"journal": ' in match.group(7)
