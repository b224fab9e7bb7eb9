"""The inbound HL7 journal (every frame received over MLLP, stored raw before processing) and
the per-sender settings of the HL7 interface (what to answer, how to read what they send)."""

import ipaddress

from django.core.exceptions import ValidationError
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


def validate_networks(value: str) -> None:
    for network in (n.strip() for n in value.split(",") if n.strip()):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValidationError(f"{network!r} is not an address or a network (CIDR)") from None


class ResponseMode(models.TextChoices):
    ACK = "ACK", "ACK (general acknowledgment)"
    ORDER_RESPONSE = "ORDER_RESPONSE", "ORR^O02 to ORM^O01, ORI^O24 to OMI^O23"


class Charset(models.TextChoices):
    """MSH-18 values (HL7 table 0211) the listener reads."""

    ASCII = "ASCII"
    LATIN_1 = "8859/1", "ISO 8859-1 (Latin-1)"
    UTF_8 = "UNICODE UTF-8"


class ProtocolCodeComponents(models.TextChoices):
    """Where OBR-4 carries the Scheduled Protocol Code (swf-spec §2): IHE's alternate triplet by default."""

    ALTERNATE = "4-6", "components 4-6 (alternate identifier, IHE default)"
    PRIMARY = "1-3", "components 1-3 (identifier)"


class SenderProfile(models.Model):
    """How the RIS talks to one HL7 sender (MSH-3 sending application, MSH-4 facility).

    A message uses the profile whose application and facility match; a profile with an empty
    facility matches any facility of that application. Senders without a profile get the
    defaults below."""

    sending_application = models.CharField(max_length=64)
    sending_facility = models.CharField(max_length=64, blank=True, default="", help_text="empty = any facility")
    response = models.CharField(max_length=16, choices=ResponseMode.choices, default=ResponseMode.ACK)
    default_charset = models.CharField(
        max_length=16,
        choices=Charset.choices,
        blank=True,
        default="",
        help_text="how to decode messages whose MSH-18 is empty; empty = RIS_HL7_DEFAULT_CHARSET",
    )
    protocol_code_components = models.CharField(
        max_length=3, choices=ProtocolCodeComponents.choices, default=ProtocolCodeComponents.ALTERNATE
    )
    allowed_peers = models.CharField(
        max_length=500,
        blank=True,
        default="",
        help_text="comma-separated addresses or networks (CIDR) this sender may send from; empty = any address",
        validators=[validate_networks],
    )
    note = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["sending_application", "sending_facility"], name="one_profile_per_sender")
        ]

    def __str__(self) -> str:
        return f"{self.sending_application}^{self.sending_facility or '*'}"

    def allows_address(self, address: str) -> bool:
        """Whether a message of this sender may come from `address` (allowed_peers)."""
        networks = [n.strip() for n in self.allowed_peers.split(",") if n.strip()]
        if not networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)
