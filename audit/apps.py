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
        from hl7.signals import message_journaled
        from ris.models import AuditEvent

        message_journaled.connect(hl7_received, sender=InboundMessage, dispatch_uid="audit.hl7_received")
        if settings.RIS_AUDIT_SYSLOG:
            from audit.syslog import forward

            post_save.connect(forward, sender=AuditEvent, dispatch_uid="audit.syslog")


def hl7_received(sender, entry, **_kw) -> None:
    """PS3.15 A.5.3.3 Data Import: an HL7 frame received. Recorded with the frame's outcome,
    in the transaction that stores it: who is MSH-3^MSH-4 (the sending address when the frame
    has no readable MSH), from where the address, outcome "success" for AA and "failure" for
    an AE, an AR or a frame that could not be answered; detail "journal" points at the raw
    frame, "answer" is the MSA-1 code."""
    from ris.workflow import Actor, audit

    host = entry.peer.rsplit(":", 1)[0]
    actor = Actor.for_hl7(entry.sending_application or host, entry.sending_facility, host)
    outcome = "success" if entry.outcome == "AA" else "failure"
    detail = {"journal": entry.pk, "bytes": len(entry.raw or b""), "answer": entry.outcome or None}
    if entry.control_id:
        detail.update(control_id=entry.control_id, message_type=entry.message_type)
    audit(actor, "hl7.received", outcome=outcome, **detail)
