"""Roles are Django groups; each carries the permissions that its people need, no more.

The workflow core checks permissions (not group names), so a site may grant a permission
to a person directly or define further groups in the admin.
"""

from django.apps import apps
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission
from rest_framework.permissions import BasePermission

ROLE_PERMISSIONS: dict[str, list[str]] = {
    "scheduler": ["ris.schedule_exam", "ris.reconcile_exam", "ris.view_requestedprocedure", "ris.view_patient"],
    "technologist": ["ris.perform_exam", "ris.view_requestedprocedure", "ris.view_patient"],
    "radiologist": ["ris.sign_report", "ris.view_requestedprocedure", "ris.view_patient", "ris.view_report"],
    "admin": [
        "ris.schedule_exam",
        "ris.perform_exam",
        "ris.reconcile_exam",
        "ris.view_requestedprocedure",
        "ris.view_patient",
        "ris.view_report",
        "ris.view_auditevent",
        "worklist.add_modality",
        "worklist.change_modality",
        "worklist.delete_modality",
        "worklist.view_modality",
        # People: see who has which role and deactivate them (which also stops their API token).
        # Roles, passwords and tokens stay with the operator's `manage.py user` / `apitoken`: an
        # admin who could set them could make themselves a radiologist (ris/admin.py).
        "auth.view_user",
        "auth.change_user",
    ],
}
ROLES = tuple(ROLE_PERMISSIONS)
PATIENT_DATA = ("ris.view_requestedprocedure", "ris.view_patient")


def ensure_roles(**_kwargs) -> None:
    """Create the role groups with their permissions (runs after every migrate)."""
    # post_migrate runs app by app; make sure the permissions of later apps exist already.
    for app_config in apps.get_app_configs():
        create_permissions(app_config, verbosity=0)
    for role, perms in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        wanted = []
        for dotted in perms:
            app_label, codename = dotted.split(".")
            wanted.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        group.permissions.set(wanted)


class ReadsPatientData(BasePermission):
    """Default permission of the JSON and FHIR APIs: every call reads exams and patients, so the
    token's person needs both view permissions (every role has them; a person without a role or
    deactivated does not). Signing checks its own permission in the workflow core (issue 9)."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perms(PATIENT_DATA))
