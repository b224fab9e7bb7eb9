"""DICOM association log on the interfaces page (issue 7 §9, worklist/associations.py): a real
`rundicom` subprocess, modalities played by pynetdicom SCUs, the log read in the admin's page."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from tests.test_reports_helpers import wait_until
from worklist.models import AssociationLog, Modality


def mwl_query() -> Dataset:
    query = Dataset()
    query.PatientName = ""
    step = Dataset()
    step.Modality = "CT"
    query.ScheduledProcedureStepSequence = [step]
    return query


def associate(port: int, calling: str):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(ModalityWorklistInformationFind)
    return ae.associate("127.0.0.1", port, ae_title="RIS")


@pytest.mark.live
def test_each_association_is_logged_with_its_result_and_the_services_it_used(dicom_scp, ui_users):
    Modality.objects.create(ae_title="CT_LOG", modality="CT")
    port = dicom_scp[1]
    assoc = associate(port, "CT_LOG")
    assert assoc.is_established
    local_port = assoc.dul.socket.socket.getsockname()[1]
    assert assoc.send_c_echo().Status == 0x0000
    for _ in range(2):
        assert [status.Status for status, _ in assoc.send_c_find(mwl_query(), ModalityWorklistInformationFind)][-1] == 0
    assoc.release()
    refused = associate(port, "STRANGER")
    assert refused.is_rejected
    aborted = associate(port, "CT_LOG")
    aborted.abort()

    assert wait_until(lambda: AssociationLog.objects.count() == 3, timeout=15)
    released = AssociationLog.objects.get(outcome="RELEASED")
    assert (released.calling_ae_title, released.called_ae_title) == ("CT_LOG", "RIS")
    assert released.address == f"127.0.0.1:{local_port}"
    assert released.services == {"C-ECHO": 1, "C-FIND MWL": 2}
    assert released.ended_at >= released.started_at
    stranger = AssociationLog.objects.get(outcome="REFUSED")
    assert (stranger.calling_ae_title, stranger.reason) == ("STRANGER", "calling AE title not recognized")
    assert AssociationLog.objects.get(outcome="ABORTED").calling_ae_title == "CT_LOG"

    admin = Client()
    admin.force_login(ui_users["admin"])
    page = admin.get(reverse("web:interfaces")).content.decode()
    assert f'data-association="{released.pk}"' in page and "C-FIND MWL \u00d72" in page
    assert "calling AE title not recognized" in page


def log_rows(count: int, calling: str, outcome: str = "RELEASED") -> None:
    start = timezone.now() - dt.timedelta(hours=1)
    AssociationLog.objects.bulk_create(
        AssociationLog(
            calling_ae_title=calling,
            called_ae_title="RIS",
            address="10.1.1.1:4000",
            outcome=outcome,
            services={"C-FIND MWL": 1},
            started_at=start + dt.timedelta(seconds=n),
            ended_at=start + dt.timedelta(seconds=n + 1),
        )
        for n in range(count)
    )


@pytest.fixture
def admin(client, ui_users):
    client.force_login(ui_users["admin"])
    return client


def shown(response) -> int:
    return response.content.decode().count("data-association=")


def test_association_log_is_paginated_newest_first(admin):
    log_rows(60, "US1")
    first = admin.get(reverse("web:dicom_associations"))
    newest = AssociationLog.objects.order_by("-started_at").first()
    assert shown(first) == 50 and f'data-association="{newest.pk}"' in first.content.decode()
    assert shown(admin.get(reverse("web:dicom_associations"), {"page": 2})) == 10


def test_association_log_is_searchable_by_ae_title_and_result(admin):
    log_rows(3, "US1")
    log_rows(2, "MR_ROOM2")
    log_rows(1, "EVIL", outcome="REFUSED")
    assert shown(admin.get(reverse("web:dicom_associations"), {"ae": "mr_room"})) == 2
    assert shown(admin.get(reverse("web:dicom_associations"), {"outcome": "REFUSED"})) == 1
    assert shown(admin.get(reverse("web:dicom_associations"), {"ae": "US1", "outcome": "REFUSED"})) == 0


def test_association_log_is_for_administrators_only(client, ui_users):
    for role in ("scheduler", "technologist", "radiologist"):
        client.force_login(ui_users[role])
        assert client.get(reverse("web:dicom_associations")).status_code == 403
    client.logout()
    assert "/login/" in client.get(reverse("web:dicom_associations"))["Location"]


def test_rows_older_than_the_retention_are_pruned(db, settings):
    from worklist.associations import prune

    settings.RIS_DICOM_ASSOCIATION_LOG_DAYS = 30
    log_rows(2, "OLD_CT")
    AssociationLog.objects.update(started_at=timezone.now() - dt.timedelta(days=31))
    log_rows(1, "NEW_CT")
    assert prune() == 2
    assert list(AssociationLog.objects.values_list("calling_ae_title", flat=True)) == ["NEW_CT"]
