"""Web UI access (issue 7 §1): login, per-role pages enforced on the server, CSRF, login
throttling, idle timeout."""

from __future__ import annotations

import time

import pytest
from django.test import Client
from django.urls import reverse

from tests.conftest import UI_PASSWORD
from web.middleware import LAST_ACTIVITY_KEY

# Every page of the UI, and which roles may open it.
PAGES = {
    "web:board": {"scheduler", "technologist", "radiologist", "admin"},
    "web:calendar": {"scheduler", "admin"},
    "web:order_new": {"scheduler", "admin"},
    "web:exam_list": {"scheduler", "technologist", "radiologist", "admin"},
    "web:patient_list": {"scheduler", "technologist", "radiologist", "admin"},
    "web:technologist": {"technologist", "admin"},
    "web:qa": {"scheduler", "admin"},
    "web:reading_list": {"radiologist"},
    "web:interfaces": {"admin"},
    "web:statistics": {"scheduler", "technologist", "radiologist", "admin"},
    "web:settings": {"scheduler", "admin"},
}
ROLES = ("scheduler", "technologist", "radiologist", "admin")


@pytest.mark.parametrize("url_name", sorted(PAGES))
def test_anonymous_visitor_is_sent_to_the_login_page(client, db, url_name):
    response = client.get(reverse(url_name))
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("url_name", sorted(PAGES))
def test_each_page_opens_only_for_the_roles_it_serves(client, ui_users, role, url_name):
    client.force_login(ui_users[role])
    response = client.get(reverse(url_name))
    assert response.status_code == (200 if role in PAGES[url_name] else 403)


@pytest.mark.parametrize("role", ROLES)
def test_navigation_shows_only_the_pages_a_role_may_open(client, ui_users, role):
    client.force_login(ui_users[role])
    html = client.get(reverse("web:statistics")).content.decode()
    for url_name, roles in PAGES.items():
        link = f'href="{reverse(url_name)}"'
        assert (link in html) == (role in roles), url_name


@pytest.mark.parametrize(
    ("role", "home"),
    [
        ("scheduler", "web:board"),
        ("technologist", "web:technologist"),
        ("radiologist", "web:reading_list"),
        ("admin", "web:board"),
    ],
)
def test_login_with_the_form_leads_each_role_to_its_home(ui_users, role, home):
    client = Client()
    response = client.post(reverse("web:login"), {"username": role, "password": UI_PASSWORD}, follow=True)
    assert response.redirect_chain[-1][0] == reverse(home)


def test_wrong_password_is_refused_with_a_message(ui_users):
    response = Client().post(reverse("web:login"), {"username": "scheduler", "password": "wrong"})
    assert response.status_code == 200
    assert b"Wrong user name or password" in response.content


def test_repeated_wrong_passwords_lock_the_account_even_for_the_right_one(ui_users, settings):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post(reverse("web:login"), {"username": "scheduler", "password": "wrong"})
    response = client.post(reverse("web:login"), {"username": "scheduler", "password": UI_PASSWORD})
    assert response.status_code == 429
    assert b"Too many failed logins" in response.content
    assert "_auth_user_id" not in client.session


def test_post_without_csrf_token_is_refused(ui_users):
    from tests.ui_support import make_exam

    exam = make_exam()
    client = Client(enforce_csrf_checks=True)
    client.force_login(ui_users["scheduler"])
    response = client.post(reverse("web:cancel_exam", args=[exam.accession_number]), {"reason": "x"})
    assert response.status_code == 403
    exam.refresh_from_db()
    assert exam.status == "ORDERED"


def test_idle_session_is_logged_out(client, ui_users, settings):
    client.force_login(ui_users["scheduler"])
    session = client.session
    session[LAST_ACTIVITY_KEY] = time.time() - settings.RIS_SESSION_IDLE_SECONDS - 5
    session.save()
    response = client.get(reverse("web:board"))
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_background_polling_does_not_keep_an_idle_session_alive(client, ui_users):
    client.force_login(ui_users["scheduler"])
    session = client.session
    last_click = time.time() - 100
    session[LAST_ACTIVITY_KEY] = last_click
    session.save()
    response = client.get(reverse("web:board"), HTTP_X_RIS_POLL="1", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert client.session[LAST_ACTIVITY_KEY] == last_click


def test_logout_needs_a_post_and_ends_the_session(client, ui_users):
    client.force_login(ui_users["scheduler"])
    client.post(reverse("web:logout"))
    assert client.get(reverse("web:board")).status_code == 302


def test_root_path_is_the_ui_home(client, ui_users):
    client.force_login(ui_users["scheduler"])
    assert client.get("/")["Location"] == reverse("web:board")
