"""Signals of the HL7 interface, importable without loading the listener's code."""

from django.dispatch import Signal

# Sent once per journaled frame when its outcome is known (answered, or kept unanswered), in
# the transaction that records the outcome: the audit trail's HL7 receipt (audit/apps.py).
message_journaled = Signal()  # kwargs: entry (hl7.models.InboundMessage)
