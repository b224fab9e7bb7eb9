"""The modality registry: the DICOM application entities allowed to talk to the RIS."""

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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "modalities"
        ordering = ["ae_title"]

    def __str__(self) -> str:
        return f"{self.ae_title} ({self.modality})"
