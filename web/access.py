"""Who may see which page: permissions (not group names) checked on the server for every view.

The roles (ris/roles.py) are groups of these permissions; the navigation shows a person
only the pages their permissions open, and each view checks again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.utils.translation import gettext_lazy as _

VIEW_EXAMS = "ris.view_requestedprocedure"
VIEW_PATIENTS = "ris.view_patient"
SCHEDULE = "ris.schedule_exam"
PERFORM = "ris.perform_exam"
RECONCILE = "ris.reconcile_exam"
SIGN = "ris.sign_report"
ADMINISTER = "ris.view_auditevent"  # the admin role's mark: interfaces, audit trail


def requires(*perms: str) -> Callable:
    """Login, then every permission in `perms` (403 otherwise)."""

    def decorate(view: Callable) -> Callable:
        def wrapped(request, *args, **kwargs):
            if not request.user.has_perms(perms):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        wrapped.__name__ = view.__name__
        wrapped.__doc__ = view.__doc__
        return login_required(wrapped)

    return decorate


@dataclass(frozen=True)
class NavItem:
    url_name: str
    label: str
    perm: str


NAVIGATION = [
    NavItem("web:board", _("Day board"), VIEW_EXAMS),
    NavItem("web:calendar", _("Scheduling"), SCHEDULE),
    NavItem("web:order_new", _("New order"), SCHEDULE),
    NavItem("web:technologist", _("Technologist"), PERFORM),
    NavItem("web:reading_list", _("Reading"), SIGN),
    NavItem("web:exam_list", _("Exams"), VIEW_EXAMS),
    NavItem("web:patient_list", _("Patients"), VIEW_PATIENTS),
    NavItem("web:qa", _("Reconciliation"), RECONCILE),
    NavItem("web:statistics", _("Statistics"), VIEW_EXAMS),
    NavItem("web:interfaces", _("Interfaces"), ADMINISTER),
    NavItem("web:settings", _("Settings"), SCHEDULE),
]


def home_url_name(user) -> str:
    """Where a person starts the day: radiologists read, technologists scan, others schedule."""
    if user.has_perm(SIGN) and not user.has_perm(SCHEDULE):
        return "web:reading_list"
    if user.has_perm(PERFORM) and not user.has_perm(SCHEDULE):
        return "web:technologist"
    return "web:board"
