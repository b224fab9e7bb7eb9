from django.contrib import admin

from worklist.models import Modality, ModalityAlias


class ModalityAliasInline(admin.TabularInline):
    model = ModalityAlias
    extra = 0


@admin.register(Modality)
class ModalityAdmin(admin.ModelAdmin):
    list_display = ("ae_title", "modality", "station_name", "location", "host", "port", "enabled")
    list_filter = ("modality", "enabled")
    inlines = [ModalityAliasInline]
