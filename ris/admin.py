"""Django admin: read-mostly views of the domain for hospital IT. Statuses are shown, never
edited here: they change only through ris.workflow."""

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied

from ris import models


@admin.register(models.Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ("patient_id", "issuer", "family_name", "given_name", "birth_date", "sex", "merged_into")
    search_fields = ("patient_id", "name_search")
    readonly_fields = ("name_search", "merged_into", "merged_at")


class ScheduledStepInline(admin.TabularInline):
    model = models.ScheduledStep
    extra = 0
    fields = ("sps_id", "modality", "station_ae_title", "start", "status")
    readonly_fields = ("status",)


@admin.register(models.RequestedProcedure)
class RequestedProcedureAdmin(admin.ModelAdmin):
    list_display = ("accession_number", "procedure_description", "modality", "status", "status_changed_at")
    list_filter = ("status", "modality", "needs_reconciliation")
    search_fields = ("accession_number", "study_instance_uid", "order__patient__patient_id")
    readonly_fields = ("status", "status_changed_at")
    inlines = [ScheduledStepInline]


@admin.register(models.AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("at", "actor_kind", "actor", "action", "outcome", "requested_procedure")
    list_filter = ("actor_kind", "action", "outcome")
    search_fields = ("actor", "action", "requested_procedure__accession_number")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


admin.site.register([models.ImagingOrder, models.PerformedStep, models.Report, models.OutboundMessage])


class PeopleAdmin(UserAdmin):
    """The admin role sees people and their roles and deactivates them here; only a superuser
    changes names, roles, permissions or passwords. Roles are given with `manage.py user add NAME
    --role ROLE`: an admin could otherwise make themselves a radiologist, or set a radiologist's
    password and sign as them (least privilege, issue 9)."""

    def get_readonly_fields(self, request, obj=None):
        if request.user.is_superuser:
            return super().get_readonly_fields(request, obj)
        return ("username", "first_name", "last_name", "email", "is_staff", "is_superuser", "groups",
                "user_permissions", "last_login", "date_joined")  # fmt: skip

    def user_change_password(self, request, id, form_url=""):
        if not request.user.is_superuser:
            raise PermissionDenied
        return super().user_change_password(request, id, form_url)


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), PeopleAdmin)
