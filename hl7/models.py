"""The inbound HL7 journal: every frame received over MLLP, stored raw before processing."""

from django.db import models


class InboundMessage(models.Model):
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    peer = models.CharField(max_length=64, help_text="host:port of the sender")
    raw = models.BinaryField(help_text="the frame's bytes, exactly as received")
    sending_application = models.CharField(max_length=64, blank=True, default="")
    sending_facility = models.CharField(max_length=64, blank=True, default="")
    control_id = models.CharField(max_length=64, blank=True, default="", help_text="MSH-10")
    message_type = models.CharField(max_length=32, blank=True, default="", help_text="MSH-9, e.g. ORM^O01")
    # AA / AE / AR once answered; empty while processing or when the frame could not be answered.
    outcome = models.CharField(max_length=2, blank=True, default="")
    error = models.TextField(blank=True, default="")
    ack = models.BinaryField(null=True, blank=True, help_text="the acknowledgment sent back")
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # A repeated MSH-10 from the same sender is answered from the journal.
        indexes = [models.Index(fields=["sending_application", "sending_facility", "control_id"])]

    def __str__(self) -> str:
        return f"{self.message_type or '?'} {self.control_id or '?'} from {self.peer} ({self.outcome or '-'})"
