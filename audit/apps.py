"""The audit trail's collection points that sit outside ris.workflow (issue 9): HL7 receipt
(one event per journaled inbound message), patient-data views over HTTP (audit.middleware),
and the optional RFC 5424 syslog copy of every AuditEvent (audit.syslog). Events follow
DICOM PS3.15 A.5 / IHE ATNA: who (actor, user), what (action, exam, patient), when, from where
(source_address), outcome."""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_save


class AuditConfig(AppConfig):
    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from hl7.models import InboundMessage
        from ris.models import AuditEvent

        post_save.connect(hl7_received, sender=InboundMessage, dispatch_uid="audit.hl7_received")
        if settings.RIS_AUDIT_SYSLOG:
            from audit.syslog import forward

            post_save.connect(forward, sender=AuditEvent, dispatch_uid="audit.syslog")


def hl7_received(sender, instance, created: bool, **_kw) -> None:
    """PS3.15 A.5.3.3 Data Import: an HL7 message received. Recorded when the raw frame is
    journaled, before it is parsed, so the actor is the sending address; the journal entry
    (detail "journal") holds MSH-3/4, MSH-9, MSH-10 and the answer once processed."""
    if not created:
        return
    from ris.workflow import Actor, audit

    host = instance.peer.rsplit(":", 1)[0]
    actor = Actor.for_hl7(instance.sending_application or host, instance.sending_facility, host)
    audit(actor, "hl7.received", journal=instance.pk, bytes=len(instance.raw or b""))
