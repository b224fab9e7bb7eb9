"""Access control (issue 9): calling AE titles bound to their modality's host, refused
associations in the audit trail, API tokens that can be revoked by rotation."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import Client
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from ris.models import AuditEvent
from tests.test_reports_helpers import user_with_role
from worklist.models import Modality

pytestmark = pytest.mark.live


def echo(port: int, calling: str = "CT1") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="RIS")
    try:
        return assoc.is_established and assoc.send_c_echo().Status == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()


def station(host: str = "", bind: bool = False) -> Modality:
    return Modality.objects.create(ae_title="CT1", modality="CT", host=host, bind_to_host=bind)


def test_ae_bound_to_its_host_is_accepted_from_that_host(dicom_scp):
    station(host="127.0.0.1", bind=True)
    assert echo(dicom_scp[1])


def test_ae_bound_to_another_host_is_refused_and_the_refusal_audited(dicom_scp):
    station(host="192.0.2.10", bind=True)  # TEST-NET-1: never this machine
    assert not echo(dicom_scp[1])
    event = AuditEvent.objects.get(action="dicom.association_refused")
    assert (event.actor, event.source_address, event.outcome) == ("CT1", "127.0.0.1", "failure")


def test_host_without_binding_is_only_for_outbound_and_admits_any_address(dicom_scp):
    station(host="192.0.2.10", bind=False)
    assert echo(dicom_scp[1])


def test_allow_any_ae_does_not_lift_a_host_binding(ris_env, tmp_path):
    from tests.conftest import manage, running

    station(host="192.0.2.10", bind=True)
    ris_env["RIS_DICOM_ALLOW_ANY_AE"] = "1"
    port = int(ris_env["RIS_DICOM_PORT"])
    with running(manage("rundicom"), ris_env, tmp_path / "dicom.log", port):
        assert echo(port, "ANYONE")  # unknown titles are welcome in this mode
        assert not echo(port, "CT1")  # a bound title from the wrong address is not


def test_unregistered_calling_ae_is_refused_and_audited(dicom_scp):
    assert not echo(dicom_scp[1], "STRANGER")
    assert AuditEvent.objects.filter(action="dicom.association_refused", actor="STRANGER").exists()


@pytest.mark.django_db
def test_rotating_an_api_token_revokes_the_old_one(capsys):
    user_with_role("apiuser", "radiologist")
    call_command("apitoken", "apiuser")
    old = capsys.readouterr().out.strip()
    client = Client()
    assert client.get("/api/exams", HTTP_AUTHORIZATION=f"Token {old}").status_code == 200
    call_command("apitoken", "apiuser", "--rotate")
    new = capsys.readouterr().out.strip()
    assert new != old
    assert client.get("/api/exams", HTTP_AUTHORIZATION=f"Token {old}").status_code == 401
    assert client.get("/api/exams", HTTP_AUTHORIZATION=f"Token {new}").status_code == 200
