from django.contrib import admin

from hl7.models import InboundMessage, SenderProfile


@admin.register(InboundMessage)
class InboundMessageAdmin(admin.ModelAdmin):
    list_display = ("received_at", "peer", "message_type", "control_id", "outcome")
    list_filter = ("outcome", "message_type")
    search_fields = ("control_id", "sending_application")
    readonly_fields = [f.name for f in InboundMessage._meta.fields]


@admin.register(SenderProfile)
class SenderProfileAdmin(admin.ModelAdmin):
    list_display = (
        "sending_application",
        "sending_facility",
        "response",
        "default_charset",
        "protocol_code_components",
    )
