"""Manual order entry, patient search, exam and patient pages, IID link (issue 7 §4, §5)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from ris.models import AuditEvent, Patient, RequestedProcedure
from tests.ui_support import local, make_exam, make_patient, make_procedure, make_room, perform, tomorrow


@pytest.fixture
def scheduler(client, ui_users):
    client.force_login(ui_users["scheduler"])
    return client


def test_patient_search_ignores_vietnamese_diacritics(scheduler):
    make_patient("P1", "Nguyễn", "Thị", "Đào")
    make_patient("P2", "Trần", "Văn", "An")
    html = scheduler.get(reverse("web:patient_search"), {"q": "nguyen thi dao"}).content.decode()
    assert "Nguyễn Thị Đào" in html
    assert "Trần" not in html


def test_patient_search_finds_by_patient_id_prefix(scheduler):
    make_patient("BN000123")
    assert b'data-patient="BN000123"' in scheduler.get(reverse("web:patient_search"), {"q": "BN0001"}).content


def test_registering_a_walk_in_assigns_an_id_and_continues_to_the_order(scheduler):
    response = scheduler.post(
        reverse("web:order_new"),
        {"register": "1", "p-family_name": "Lê", "p-given_name": "Hạnh", "p-birth_date": "1980-02-03", "p-sex": "F"},
    )
    patient = Patient.objects.get(family_name="Lê")
    assert response["Location"].endswith(f"?patient={patient.pk}")
    assert patient.patient_id.startswith("R") and patient.issuer == "RAD"
    assert AuditEvent.objects.filter(patient=patient, action="patient.registered", actor="scheduler").exists()


def test_registering_without_a_name_shows_form_errors(scheduler):
    response = scheduler.post(reverse("web:order_new"), {"register": "1", "p-family_name": ""})
    assert response.status_code == 200
    assert response.context["patient_form"].errors


def test_order_with_two_catalogue_procedures_creates_two_ordered_exams(scheduler):
    patient = make_patient()
    ct = make_procedure("CTHEAD", "CT", 20, "CT head")
    us = make_procedure("USABD", "US", 15, "US abdomen")
    response = scheduler.post(
        f"{reverse('web:order_new')}?patient={patient.pk}",
        {"o-procedures": [ct.pk, us.pk], "o-priority": "STAT", "o-reason": "Đau bụng"},
    )
    exams = list(RequestedProcedure.objects.filter(order__patient=patient).order_by("id"))
    assert [(e.procedure_code, e.modality, e.status) for e in exams] == [
        ("CTHEAD", "CT", "ORDERED"),
        ("USABD", "US", "ORDERED"),
    ]
    assert exams[0].order.priority == "STAT" and exams[0].order.reason == "Đau bụng"
    assert response["Location"] == reverse("web:schedule_exam", args=[exams[0].accession_number])


def test_order_without_procedure_is_refused(scheduler):
    patient = make_patient()
    response = scheduler.post(f"{reverse('web:order_new')}?patient={patient.pk}", {"o-priority": "ROUTINE"})
    assert response.status_code == 200
    assert "procedures" in response.context["order_form"].errors
    assert not RequestedProcedure.objects.exists()


def test_duplicate_his_order_number_is_a_form_error(scheduler):
    patient = make_patient()
    ct = make_procedure()
    url = f"{reverse('web:order_new')}?patient={patient.pk}"
    scheduler.post(url, {"o-procedures": [ct.pk], "o-priority": "ROUTINE", "o-placer_order_number": "HIS-1"})
    response = scheduler.post(url, {"o-procedures": [ct.pk], "o-priority": "ROUTINE", "o-placer_order_number": "HIS-1"})
    assert "already exists" in str(response.context["order_form"].errors)
    assert RequestedProcedure.objects.count() == 1


@pytest.mark.parametrize("param", ["accessionNumber", "studyUID"])
def test_iid_link_opens_the_exam(scheduler, param):
    exam = make_exam()
    value = exam.accession_number if param == "accessionNumber" else exam.study_instance_uid
    response = scheduler.get(f"/iid?{param}={value}")
    assert response["Location"] == reverse("web:exam_detail", args=[exam.accession_number])


def test_iid_link_by_patient_id_opens_the_patient(scheduler):
    patient = make_patient("P77")
    assert scheduler.get("/iid?patientID=P77")["Location"] == reverse("web:patient_detail", args=[patient.pk])


def test_iid_link_to_an_unknown_exam_is_not_found(scheduler, db):
    assert scheduler.get("/iid?accessionNumber=NOPE").status_code == 404


def test_exam_list_filters_by_status_and_folded_name(scheduler):
    a = make_exam(make_patient("P1", "Nguyễn", "Thị", "Đào"))
    make_exam(make_patient("P2", "Trần", "", "An"))
    response = scheduler.get(reverse("web:exam_list"), {"q": "dao", "status": "ORDERED"})
    assert [e.accession_number for e in response.context["page"]] == [a.accession_number]


def test_exam_list_filters_by_scheduled_date_range(scheduler):
    make_room()
    inside = make_exam(start=local(tomorrow(), 9), station="CT1")
    make_exam(make_patient("P2"))
    day = tomorrow().isoformat()
    response = scheduler.get(reverse("web:exam_list"), {"date_from": day, "date_to": day})
    assert [e.accession_number for e in response.context["page"]] == [inside.accession_number]


def test_exam_list_is_paginated(scheduler):
    patient = make_patient()
    for _ in range(30):
        make_exam(patient)
    response = scheduler.get(reverse("web:exam_list"), {"page": 2})
    assert len(response.context["page"]) == 5


def test_exam_page_timeline_shows_order_schedule_and_mpps(scheduler):
    make_room()
    exam = make_exam(start=local(tomorrow(), 9), station="CT1")
    perform(exam)
    response = scheduler.get(reverse("web:exam_detail", args=[exam.accession_number]))
    entries = [e.code or e.title for e in response.context["timeline"]]
    for expected in ("exam.ordered", "exam.scheduled", "MPPS IN PROGRESS", "MPPS COMPLETED", "exam.completed"):
        assert expected in entries


def test_exam_status_partial_is_served_to_htmx_polling(scheduler):
    exam = make_exam()
    response = scheduler.get(reverse("web:exam_detail", args=[exam.accession_number]), HTTP_HX_REQUEST="true")
    assert response.templates[0].name == "web/_exam_status.html"
    assert b'data-status="ORDERED"' in response.content


def test_patient_page_lists_merged_identifiers_and_history(scheduler):
    from ris import workflow

    survivor, merged = make_patient("P1"), make_patient("OLD9", "Trần", "", "An")
    exam = make_exam(merged)
    workflow.merge_patients(workflow.Actor("system", "t"), survivor, merged)
    html = scheduler.get(reverse("web:patient_detail", args=[survivor.pk])).content.decode()
    assert "OLD9" in html and exam.accession_number in html


def test_exam_timeline_shows_the_hl7_order_message_with_its_raw_text(scheduler):
    from hl7.models import InboundMessage
    from ris import workflow

    raw = b"MSH|^~\\&|HIS|HOSP|RIS|RAD|20260101||ORM^O01|MSG1|P|2.3.1\rORC|NW|PL-77\r"
    InboundMessage.objects.create(
        peer="127.0.0.1:1", raw=raw, sending_application="HIS", control_id="MSG1", message_type="ORM^O01", outcome="AA"
    )
    request = workflow.OrderRequest(
        placer_order_number="PL-77",
        source_application="HIS",
        procedures=[workflow.ProcedureRequest(modality="CT", procedure_code="CTHEAD")],
    )
    exam = workflow.place_order(
        workflow.Actor.for_hl7("HIS", "HOSP"), make_patient(), request
    ).requested_procedures.get()
    response = scheduler.get(reverse("web:exam_detail", args=[exam.accession_number]))
    [entry] = [e for e in response.context["timeline"] if e.kind == "hl7-in"]
    assert entry.title == "HL7 ORM^O01 MSG1 → AA"
    assert "ORC|NW|PL-77" in entry.raw


def test_duplicate_patient_is_merged_into_the_one_on_screen(scheduler):
    survivor, duplicate = make_patient("P1"), make_patient("DUP1", "Nguyen", "Thi", "Dao")
    exam = make_exam(duplicate)
    scheduler.post(reverse("web:merge_patient", args=[survivor.pk]), {"patient_id": "DUP1"})
    duplicate.refresh_from_db()
    assert duplicate.merged_into == survivor
    assert exam.order.__class__.objects.get(pk=exam.order.pk).patient == survivor
    assert AuditEvent.objects.filter(action="patient.merged", actor="scheduler").exists()


def test_merge_with_an_unknown_id_changes_nothing(scheduler):
    survivor = make_patient("P1")
    response = scheduler.post(reverse("web:merge_patient", args=[survivor.pk]), {"patient_id": "NOPE"}, follow=True)
    assert b"No other patient with ID NOPE" in response.content
    assert not Patient.objects.exclude(merged_into=None).exists()


def test_technologist_cannot_merge_patients(client, ui_users):
    survivor, duplicate = make_patient("P1"), make_patient("DUP1")
    client.force_login(ui_users["technologist"])
    assert client.post(reverse("web:merge_patient", args=[survivor.pk]), {"patient_id": "DUP1"}).status_code == 403
    duplicate.refresh_from_db()
    assert duplicate.merged_into is None
