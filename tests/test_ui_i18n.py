"""Vietnamese and English UI, times in the site's zone, Vietnamese names (issue 7 §11)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from tests.ui_support import local, make_exam, make_patient, make_room

LOCALE = Path(settings.BASE_DIR) / "web" / "locale" / "vi" / "LC_MESSAGES"


def test_switching_to_vietnamese_translates_the_pages(client, ui_users):
    client.force_login(ui_users["scheduler"])
    response = client.post(reverse("set_language"), {"language": "vi", "next": reverse("web:board")}, follow=True)
    html = response.content.decode()
    assert 'lang="vi"' in html
    assert "Bảng trong ngày" in html and "Chờ xếp lịch" in html
    assert "Day board" not in html


def test_english_is_the_default(client, ui_users):
    client.force_login(ui_users["scheduler"])
    assert "Day board" in client.get(reverse("web:board")).content.decode()


def test_every_ui_string_has_a_vietnamese_translation():
    catalogue = (LOCALE / "django.po").read_text(encoding="utf-8")
    entries = re.findall(r'\nmsgid "(.+)"\n(?:msgid_plural ".*"\n)?msgstr(?:\[0\])? "(.*)"', catalogue)
    assert len(entries) > 250
    assert [msgid for msgid, msgstr in entries if not msgstr] == []
    assert "#, fuzzy" not in catalogue


def test_compiled_catalogue_carries_every_translation_of_its_source():
    import gettext

    catalogue = (LOCALE / "django.po").read_text(encoding="utf-8")
    entries = re.findall(r'\nmsgid "(.+)"\nmsgstr "(.*)"', catalogue)
    with open(LOCALE / "django.mo", "rb") as mo:
        compiled = gettext.GNUTranslations(mo)
    stale = [m for m, t in entries if compiled.gettext(m.replace('\\"', '"')) != t.replace('\\"', '"')]
    assert stale == []


def test_workflow_errors_reach_the_vietnamese_user_in_vietnamese(client, ui_users):
    make_room("CT1")
    from tests.ui_support import tomorrow

    booked = make_exam(start=local(tomorrow(), 9), station="CT1")
    exam = make_exam(make_patient("P2"))
    client.force_login(ui_users["scheduler"])
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "vi"
    response = client.post(
        reverse("web:schedule_exam", args=[exam.accession_number]),
        {"station_ae_title": "CT1", "date": tomorrow().isoformat(), "time": "09:10"},
    )
    assert f"Trùng lịch: CT1 đã có ca {booked.accession_number}" in response.content.decode()


@pytest.mark.parametrize(("zone", "shown"), [("UTC", "02:00"), ("Asia/Ho_Chi_Minh", "09:00")])
def test_times_are_shown_in_the_site_time_zone(client, ui_users, settings, zone, shown):
    import datetime as dt

    make_room("CT1")
    settings.RIS_TIME_ZONE = zone
    start = dt.datetime(2030, 1, 2, 2, 0, tzinfo=dt.UTC)
    exam = make_exam(start=start, station="CT1")
    client.force_login(ui_users["scheduler"])
    html = client.get(reverse("web:exam_detail", args=[exam.accession_number])).content.decode()
    assert f"02/01/2030 {shown}" in html


def test_vietnamese_names_are_shown_with_their_diacritics(client, ui_users):
    patient = make_patient("P1", "Đặng", "Thị", "Hạnh")
    client.force_login(ui_users["scheduler"])
    html = client.get(reverse("web:patient_list"), {"q": "DANG HANH"}).content.decode()
    assert "Đặng Thị Hạnh" in html and patient.patient_id in html


def test_timeline_details_are_labelled_in_vietnamese(client, ui_users):
    from tests.ui_support import tomorrow

    make_room("CT1")
    exam = make_exam(start=local(tomorrow(), 9), station="CT1")
    client.force_login(ui_users["scheduler"])
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "vi"
    response = client.get(reverse("web:exam_detail", args=[exam.accession_number]))
    details = [e.detail for e in response.context["timeline"] if e.code == "exam.scheduled"]
    step = exam.scheduled_steps.get().sps_id
    assert details == [f"từ: Đã chỉ định · sang: Đã xếp lịch · các bước: {step}"]
    html = response.content.decode()
    assert "old_status" not in html and "new_status" not in html and "steps:" not in html
