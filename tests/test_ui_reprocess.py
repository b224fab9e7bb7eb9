"""Reprocess a rejected HL7 message from the UI (issue 7 §7, hl7/reprocess.py): messages go to
the real `runmllp` listener first; once the cause is fixed, an administrator's Reprocess runs the
stored frame again as a new journal entry, linked to the untouched original."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from hl7.models import Charset, InboundMessage, SenderProfile
from ris.models import AuditEvent, ExamStatus, Patient, RequestedProcedure
from tests.conftest import UI_PASSWORD
from tests.test_hl7_inbound import msa, orm, send

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

# A legacy sender: Latin-1 bytes and no MSH-18, so the default (UTF-8) cannot read them.
LATIN1_ADT = (
    "MSH|^~\\&|LEGACYHIS|HOSP|RIS|RAD|20261126101500||ADT^A04|L1|P|2.3.1\r"
    "EVN|A04|20261126101500\r"
    "PID|||LEG1^^^HOSP||Hélène^Müller||19800101|F\r"
).encode("latin-1")


@pytest.fixture
def admin(client, ui_users):
    client.force_login(ui_users["admin"])
    return client


def reprocess(client, entry: InboundMessage, **extra):
    return client.post(reverse("web:hl7_reprocess", args=[entry.pk]), extra)


def test_ae_for_an_unreadable_charset_becomes_aa_after_the_sender_profile_is_fixed(shared_mllp_listener, admin):
    ack = send(shared_mllp_listener, LATIN1_ADT, "latin-1")
    assert msa(ack)[1] == "AE"
    original = InboundMessage.objects.get()
    assert not Patient.objects.exists()
    reprocess(admin, original)  # before the fix: AE again
    assert InboundMessage.objects.get(control_id="L1-R1").outcome == "AE"
    SenderProfile.objects.create(sending_application="LEGACYHIS", default_charset=Charset.LATIN_1)

    response = reprocess(admin, original)  # seconds later: the profile is read afresh

    entry = InboundMessage.objects.get(control_id="L1-R2")
    assert response["Location"] == reverse("web:hl7_message", args=[entry.pk])
    assert (entry.outcome, entry.peer) == ("AA", f"127.0.0.1:reprocess #{original.pk}")
    assert entry.error == f"reprocess of #{original.pk}"
    assert Patient.objects.get(patient_id="LEG1").family_name == "Hélène"
    before = InboundMessage.objects.get(pk=original.pk)
    assert (before.outcome, bytes(before.raw), bytes(before.ack)) == ("AE", LATIN1_ADT, bytes(original.ack))
    event = AuditEvent.objects.filter(action="hl7.reprocessed").latest("id")
    assert event.actor == "admin"
    assert event.detail == {
        "original": original.pk,
        "entry": entry.pk,
        "control_id": "L1-R2",
        "old_outcome": "AE",
        "new_outcome": "AA",
    }
    page = admin.get(response["Location"]).content.decode()
    assert 'data-outcome="AA"' in page and f'href="{reverse("web:hl7_message", args=[original.pk])}"' in page


def test_cancel_that_overtook_its_order_is_reprocessed_after_the_order_arrived(shared_mllp_listener, admin):
    assert msa(send(shared_mllp_listener, orm(control="CA", msg_id="C1", status="CA")))[1] == "AE"
    assert msa(send(shared_mllp_listener, orm(msg_id="N1")))[1] == "AA"
    cancel = InboundMessage.objects.get(control_id="C1")
    reprocess(admin, cancel)
    assert InboundMessage.objects.get(control_id="C1-R1").outcome == "AA"
    assert RequestedProcedure.objects.get().status == ExamStatus.CANCELLED


def test_reprocess_comes_from_the_original_address_so_allowed_peers_still_apply(shared_mllp_listener, admin):
    SenderProfile.objects.create(sending_application="HIS", allowed_peers="127.0.0.0/8")
    send(shared_mllp_listener, orm(control="CA", msg_id="C6", status="CA"))
    send(shared_mllp_listener, orm(msg_id="N6"))
    cancel = InboundMessage.objects.get(control_id="C6")
    reprocess(admin, cancel)
    assert InboundMessage.objects.get(control_id="C6-R1").outcome == "AA"
    SenderProfile.objects.update(allowed_peers="10.9.9.0/24")  # the sender moved: no longer from here
    original = InboundMessage.objects.get(control_id="N6")
    stored = InboundMessage.objects.create(
        peer=original.peer, raw=bytes(original.raw).replace(b"|N6|", b"|N7|"), outcome="AR", control_id="N7"
    )
    reprocess(admin, stored)
    entry = InboundMessage.objects.filter(pk__gt=stored.pk).get()
    assert entry.outcome == "AR" and "not allowed from 127.0.0.1" in entry.error


def test_a_second_reprocess_of_an_ae_runs_again_under_the_next_control_id(shared_mllp_listener, admin):
    send(shared_mllp_listener, orm(control="CA", msg_id="C2", status="CA"))
    cancel = InboundMessage.objects.get(control_id="C2")
    reprocess(admin, cancel)
    assert InboundMessage.objects.get(control_id="C2-R1").outcome == "AE"  # still no order: still AE
    send(shared_mllp_listener, orm(msg_id="N2"))
    reprocess(admin, cancel)
    assert InboundMessage.objects.get(control_id="C2-R2").outcome == "AA"


def test_ar_entry_runs_again_with_its_own_control_id(shared_mllp_listener, admin):
    """An AR (e.g. an internal error while the database was away) is not answered from the
    journal, so its frame runs again unchanged."""
    raw = orm(msg_id="R1").encode()
    original = InboundMessage.objects.create(
        peer="10.0.0.9:4000", raw=raw, outcome="AR", control_id="R1", sending_application="HIS", message_type="ORM^O01"
    )
    reprocess(admin, original)
    entry = InboundMessage.objects.exclude(pk=original.pk).get()
    assert (entry.outcome, entry.control_id, bytes(entry.raw)) == ("AA", "R1", raw)
    assert RequestedProcedure.objects.count() == 1


def test_reconciliation_list_offers_reprocess_to_admins_and_drops_messages_reprocessed_to_aa(
    shared_mllp_listener, admin, ui_users
):
    send(shared_mllp_listener, orm(control="CA", msg_id="C3", status="CA"))
    cancel = InboundMessage.objects.get()
    page = admin.get(reverse("web:qa")).content.decode()
    assert f'action="{reverse("web:hl7_reprocess", args=[cancel.pk])}"' in page
    scheduler = Client()
    scheduler.force_login(ui_users["scheduler"])
    assert f'data-journal="{cancel.pk}"' in scheduler.get(reverse("web:qa")).content.decode()
    assert "web:hl7_reprocess" not in scheduler.get(reverse("web:qa")).content.decode()
    assert b"/reprocess/" not in scheduler.get(reverse("web:qa")).content
    send(shared_mllp_listener, orm(msg_id="N3"))
    reprocess(admin, cancel)
    assert f'data-journal="{cancel.pk}"' not in admin.get(reverse("web:qa")).content.decode()


def test_only_administrators_reprocess_and_only_by_post_with_csrf(shared_mllp_listener, ui_users):
    send(shared_mllp_listener, orm(control="CA", msg_id="C4", status="CA"))
    cancel = InboundMessage.objects.get()
    url = reverse("web:hl7_reprocess", args=[cancel.pk])
    for role in ("scheduler", "technologist", "radiologist"):
        client = Client()
        client.force_login(ui_users[role])
        assert client.post(url).status_code == 403
    anonymous = Client().post(url)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    admin = Client(enforce_csrf_checks=True)
    admin.login(username="admin", password=UI_PASSWORD)
    assert admin.get(url).status_code == 405
    assert admin.post(url).status_code == 403  # no CSRF token
    assert InboundMessage.objects.count() == 1
    assert not AuditEvent.objects.filter(action="hl7.reprocessed").exists()


def test_an_accepted_message_cannot_be_reprocessed(shared_mllp_listener, admin):
    send(shared_mllp_listener, orm(msg_id="N5"))
    accepted = InboundMessage.objects.get()
    response = reprocess(admin, accepted, next=reverse("web:qa"))
    assert response["Location"] == reverse("web:qa")
    assert InboundMessage.objects.count() == 1
    assert "only AE or AR" in admin.get(reverse("web:qa")).content.decode()
