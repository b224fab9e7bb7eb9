"""The modality registry: the DICOM application entities allowed to talk to the RIS."""

import socket

from django.db import models


class AnswerCharacterSet(models.TextChoices):
    """How worklist answers are encoded for this modality (some consoles cannot show UTF-8)."""

    UTF8 = "ISO_IR 192", "UTF-8 (ISO_IR 192)"
    LATIN1 = "ISO_IR 100", "Latin-1 (ISO_IR 100)"
    ASCII = "", "ASCII, transliterated"


class Modality(models.Model):
    ae_title = models.CharField(max_length=16, unique=True)
    modality = models.CharField(max_length=16, help_text="DICOM modality code: CT, MR, US, CR, DX, MG, ...")
    station_name = models.CharField(max_length=16, blank=True, default="")
    location = models.CharField(max_length=16, blank=True, default="")
    host = models.CharField(max_length=255, blank=True, default="", help_text="for outbound associations")
    port = models.PositiveIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    # Opening hours of the room, in RIS_TIME_ZONE: the scheduling calendar offers slots inside them.
    opens_at = models.TimeField(null=True, blank=True)
    closes_at = models.TimeField(null=True, blank=True)
    answer_character_set = models.CharField(
        max_length=16, choices=AnswerCharacterSet.choices, blank=True, default=AnswerCharacterSet.UTF8
    )
    # Worklist coercion (issue 4): a console that leaves Scheduled Station AE Title empty gets
    # only the steps scheduled on its own AE title (or one of its aliases).
    station_from_calling_ae = models.BooleanField(
        default=False,
        help_text="worklist queries with an empty Scheduled Station AE Title return only this station's steps",
    )
    # Access control (issue 9): this AE title (and its aliases) is accepted only from `host`.
    bind_to_host = models.BooleanField(
        default=False, help_text="accept associations with this AE title only from the address of `host`"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "modalities"
        ordering = ["ae_title"]

    def __str__(self) -> str:
        return f"{self.ae_title} ({self.modality})"

    @property
    def station_ae_titles(self) -> list[str]:
        """The AE titles this console answers to: its own and its aliases."""
        return [self.ae_title, *self.aliases.values_list("ae_title", flat=True)]

    def accepts_address(self, address: str) -> bool:
        """Whether an association from `address` may use this AE title: any address unless the
        modality is bound to its host, else only the addresses `host` resolves to."""
        if not (self.bind_to_host and self.host):
            return True
        try:
            resolved = {info[4][0] for info in socket.getaddrinfo(self.host, None)}
        except OSError:
            return False  # a bound host that does not resolve admits no one
        return address in resolved

    @classmethod
    def for_calling_ae(cls, ae_title: str) -> "Modality | None":
        """The enabled modality a calling AE title belongs to, by its own title or an alias."""
        return (
            cls.objects.filter(enabled=True)
            .filter(models.Q(ae_title=ae_title) | models.Q(aliases__ae_title=ae_title))
            .first()
        )


class ModalityAlias(models.Model):
    """A further AE title of one console (several AE titles, one worklist)."""

    modality = models.ForeignKey(Modality, on_delete=models.CASCADE, related_name="aliases")
    ae_title = models.CharField(max_length=16, unique=True)

    class Meta:
        verbose_name_plural = "modality aliases"

    def __str__(self) -> str:
        return f"{self.ae_title} -> {self.modality.ae_title}"


class AssociationOutcome(models.TextChoices):
    RELEASED = "RELEASED", "accepted, released"
    ABORTED = "ABORTED", "aborted"
    REFUSED = "REFUSED", "refused"


class AssociationLog(models.Model):
    """One DICOM association with the SCP (worklist/associations.py): who called from where, how
    it ended, and which services it used (e.g. {"C-FIND MWL": 2}). Written when it ends."""

    calling_ae_title = models.CharField(max_length=16, db_index=True)
    called_ae_title = models.CharField(max_length=16, blank=True, default="")
    address = models.CharField(max_length=64, help_text="host:port of the caller")
    outcome = models.CharField(max_length=8, choices=AssociationOutcome.choices)
    reason = models.CharField(max_length=200, blank=True, default="", help_text="why it was refused or aborted")
    services = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField(db_index=True)
    ended_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.calling_ae_title} -> {self.called_ae_title} ({self.outcome})"

    @property
    def duration_seconds(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()
