"""The IHE Scheduled Workflow domain: patients, orders, exams, steps, arrivals, reports.

Vocabulary (IHE RAD TF / DICOM PS3.3 Annex K):
- an ImagingOrder is the imaging service request from the HIS (placer/filler numbers);
- a RequestedProcedure is the *exam*: one accession number, one Study Instance UID;
- a ScheduledStep is one Modality Worklist item (SPS); a PerformedStep is one MPPS;
- Study/Series/Instance record what actually arrived (C-STORE or IAN), keyed by UID.

Status fields change only through ris.workflow; nothing else writes them.
"""

from __future__ import annotations

import unicodedata

from django.conf import settings
from django.db import models
from django.db.models import Q


def fold_for_search(text: str) -> str:
    """Uppercase, accent-free form of a name for diacritics-insensitive matching.

    "Nguyễn Thị Đào" -> "NGUYEN THI DAO"; Đ/đ has no decomposition, so it is mapped by hand.
    """
    text = text.replace("Đ", "D").replace("đ", "d")
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


class ExamStatus(models.TextChoices):
    """Life cycle of an exam as the UI and APIs show it (contract.md)."""

    ORDERED = "ORDERED"
    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    READY_FOR_READING = "READY_FOR_READING"
    PRELIMINARY = "PRELIMINARY"
    FINAL = "FINAL"
    AMENDED = "AMENDED"
    CANCELLED = "CANCELLED"
    DISCONTINUED = "DISCONTINUED"


class StepStatus(models.TextChoices):
    """Scheduled Procedure Step status. Only SCHEDULED/ARRIVED/STARTED are DICOM defined terms;
    the final ones are internal and never sent on the wire (swf-spec §3)."""

    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    STARTED = "STARTED"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"
    CANCELLED = "CANCELLED"


class PerformedStatus(models.TextChoices):
    """Performed Procedure Step Status (0040,0252), exact DICOM strings."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


class ReportStatus(models.TextChoices):
    DRAFT = "DRAFT"
    PRELIMINARY = "PRELIMINARY"
    FINAL = "FINAL"
    AMENDED = "AMENDED"


class Priority(models.TextChoices):
    """Requested Procedure Priority (0040,1003) defined terms."""

    STAT = "STAT"
    HIGH = "HIGH"
    ROUTINE = "ROUTINE"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


class Sex(models.TextChoices):
    MALE = "M"
    FEMALE = "F"
    OTHER = "O"
    UNKNOWN = "", "unknown"


class Patient(models.Model):
    """A patient as the HIS identifies them: Patient ID + Issuer of Patient ID."""

    patient_id = models.CharField(max_length=64)
    issuer = models.CharField(max_length=64, blank=True, default="")
    family_name = models.CharField(max_length=64, blank=True, default="")
    given_name = models.CharField(max_length=64, blank=True, default="")
    middle_name = models.CharField(max_length=64, blank=True, default="")
    name_prefix = models.CharField(max_length=64, blank=True, default="")
    name_suffix = models.CharField(max_length=64, blank=True, default="")
    # Upper-case, accent-free copy of the name for worklist matching and UI search.
    name_search = models.CharField(max_length=330, blank=True, default="", db_index=True)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=1, choices=Sex.choices, blank=True, default="")
    # Set when an ADT^A40 merged this record into another; the survivor carries the exams.
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="merged_patients"
    )
    merged_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["patient_id", "issuer"], name="patient_id_unique_per_issuer"),
        ]
        indexes = [models.Index(fields=["family_name", "given_name"])]

    def __str__(self) -> str:
        return f"{self.dicom_name} ({self.patient_id})"

    def save(self, *args, **kwargs) -> None:
        self.name_search = fold_for_search(self.dicom_name)
        super().save(*args, **kwargs)

    @property
    def dicom_name(self) -> str:
        """DICOM PN: family^given^middle^prefix^suffix, trailing empty components dropped."""
        parts = [self.family_name, self.given_name, self.middle_name, self.name_prefix, self.name_suffix]
        return "^".join(parts).rstrip("^")

    @property
    def display_name(self) -> str:
        return " ".join(p for p in (self.family_name, self.middle_name, self.given_name) if p)


class PatientIdentifier(models.Model):
    """Further identifiers of a patient (other issuers, national id, merged-away ids)."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="identifiers")
    value = models.CharField(max_length=64)
    issuer = models.CharField(max_length=64, blank=True, default="")
    kind = models.CharField(max_length=16, blank=True, default="", help_text="HL7 table 0203 type, e.g. MR, NI")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["value", "issuer"], name="identifier_unique_per_issuer")]

    def __str__(self) -> str:
        return f"{self.value}^^^{self.issuer}"


class ImagingOrder(models.Model):
    """The imaging service request: what the HIS (placer) asked the RIS (filler) to do."""

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="orders")
    placer_order_number = models.CharField(max_length=64, blank=True, default="")
    placer_issuer = models.CharField(max_length=64, blank=True, default="")
    filler_order_number = models.CharField(max_length=64)
    filler_issuer = models.CharField(max_length=64, blank=True, default="")
    ordering_physician = models.CharField(max_length=200, blank=True, default="", help_text="DICOM PN")
    referring_physician = models.CharField(max_length=200, blank=True, default="", help_text="DICOM PN")
    reason = models.CharField(max_length=200, blank=True, default="")
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.ROUTINE)
    admission_id = models.CharField(max_length=64, blank=True, default="")
    patient_location = models.CharField(max_length=64, blank=True, default="")
    medical_alerts = models.CharField(max_length=200, blank=True, default="")
    allergies = models.CharField(max_length=200, blank=True, default="")
    patient_state = models.CharField(max_length=64, blank=True, default="")
    pregnancy_status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="(0010,21C0): 1-4")
    transport_arrangements = models.CharField(max_length=64, blank=True, default="")
    # Who sent it (MSH-3/4), to answer and to send results back to; empty for UI orders.
    source_application = models.CharField(max_length=64, blank=True, default="")
    source_facility = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["placer_order_number", "placer_issuer"],
                condition=~Q(placer_order_number=""),
                name="placer_number_unique_per_issuer",
            ),
            models.UniqueConstraint(fields=["filler_order_number", "filler_issuer"], name="filler_number_unique"),
        ]

    def __str__(self) -> str:
        return f"order {self.placer_order_number or '-'}/{self.filler_order_number}"


class RequestedProcedure(models.Model):
    """The exam: one requested procedure with one accession number and one Study Instance UID."""

    order = models.ForeignKey(ImagingOrder, on_delete=models.PROTECT, related_name="requested_procedures")
    accession_number = models.CharField(max_length=16)
    accession_issuer = models.CharField(max_length=64, blank=True, default="")
    requested_procedure_id = models.CharField(max_length=16)
    study_instance_uid = models.CharField(max_length=64, unique=True)
    procedure_code = models.CharField(max_length=16, blank=True, default="")
    procedure_code_scheme = models.CharField(max_length=16, blank=True, default="")
    procedure_description = models.CharField(max_length=64, blank=True, default="")
    modality = models.CharField(max_length=16, blank=True, default="", db_index=True)
    status = models.CharField(max_length=20, choices=ExamStatus.choices, default=ExamStatus.ORDERED, db_index=True)
    status_changed_at = models.DateTimeField(auto_now_add=True)
    # Created from an MPPS without a scheduled step; a scheduler matches it to an order or keeps it.
    unscheduled = models.BooleanField(default=False)
    needs_reconciliation = models.BooleanField(default=False, db_index=True)
    # Set by arrival tracking: "images missing", "extra instances", ...; empty when nothing is wrong.
    qa_problem = models.CharField(max_length=200, blank=True, default="")
    # Due time of the completeness check queued for this exam (worklist.tasks), None when none is:
    # further requests join it instead of queueing one task per arrival.
    arrival_check_due_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["accession_number", "accession_issuer"], name="accession_unique_per_issuer"
            ),
        ]
        indexes = [models.Index(fields=["status", "modality"])]
        permissions = [
            ("schedule_exam", "Can order, schedule, reschedule and cancel exams"),
            ("perform_exam", "Can record patient arrival and exam progress"),
            ("reconcile_exam", "Can reconcile unscheduled exams and clear QA problems"),
        ]

    def __str__(self) -> str:
        return f"exam {self.accession_number} ({self.status})"

    @property
    def patient(self) -> Patient:
        return self.order.patient


class ScheduledStep(models.Model):
    """A Scheduled Procedure Step: one Modality Worklist item."""

    requested_procedure = models.ForeignKey(
        RequestedProcedure, on_delete=models.CASCADE, related_name="scheduled_steps"
    )
    sps_id = models.CharField(max_length=16)
    modality = models.CharField(max_length=16)
    station_ae_title = models.CharField(max_length=16, blank=True, default="")
    station_name = models.CharField(max_length=16, blank=True, default="")
    location = models.CharField(max_length=16, blank=True, default="")
    start = models.DateTimeField(null=True, blank=True)
    description = models.CharField(max_length=64, blank=True, default="")
    # [{"code": "...", "scheme": "...", "meaning": "..."}], the Scheduled Protocol Code Sequence.
    protocol_codes = models.JSONField(default=list, blank=True)
    performing_physician = models.CharField(max_length=200, blank=True, default="", help_text="DICOM PN")
    pre_medication = models.CharField(max_length=64, blank=True, default="")
    contrast_agent = models.CharField(max_length=64, blank=True, default="")
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.SCHEDULED)
    status_changed_at = models.DateTimeField(auto_now_add=True)
    # The worklist response for this step, prepared when it is scheduled or changed (DICOM JSON).
    mwl_dataset = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["requested_procedure", "sps_id"], name="sps_id_unique_per_exam"),
        ]
        # The worklist query filters on status first, then station/modality and a start range.
        indexes = [
            models.Index(fields=["status", "start"]),
            models.Index(fields=["status", "station_ae_title", "start"]),
            models.Index(fields=["status", "modality", "start"]),
        ]

    def __str__(self) -> str:
        return f"step {self.sps_id} {self.modality}@{self.station_ae_title or '-'} ({self.status})"


class PerformedStep(models.Model):
    """A Modality Performed Procedure Step (MPPS), as the modality reported it."""

    sop_instance_uid = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=16, choices=PerformedStatus.choices, default=PerformedStatus.IN_PROGRESS)
    scheduled_steps = models.ManyToManyField(ScheduledStep, related_name="performed_steps", blank=True)
    performed_station_ae_title = models.CharField(max_length=16, blank=True, default="")
    modality = models.CharField(max_length=16, blank=True, default="")
    pps_id = models.CharField(max_length=16, blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    discontinuation_reason = models.CharField(max_length=200, blank=True, default="")
    # The whole MPPS as last stored (DICOM JSON model), N-CREATE merged with every N-SET.
    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"MPPS {self.sop_instance_uid} ({self.status})"


class ExpectedInstance(models.Model):
    """One SOP instance an MPPS says it produced (Performed Series Sequence)."""

    performed_step = models.ForeignKey(PerformedStep, on_delete=models.CASCADE, related_name="expected_instances")
    series_instance_uid = models.CharField(max_length=64)
    sop_instance_uid = models.CharField(max_length=64, db_index=True)
    sop_class_uid = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["performed_step", "sop_instance_uid"], name="expected_once_per_mpps"),
        ]

    def __str__(self) -> str:
        return f"expected {self.sop_instance_uid}"


class Study(models.Model):
    """A study whose instances arrived, matched to its exam by Study UID, then accession."""

    study_instance_uid = models.CharField(max_length=64, unique=True)
    requested_procedure = models.ForeignKey(
        RequestedProcedure, null=True, blank=True, on_delete=models.SET_NULL, related_name="studies"
    )
    accession_number = models.CharField(max_length=16, blank=True, default="", db_index=True)
    patient_id = models.CharField(max_length=64, blank=True, default="")
    study_date = models.DateField(null=True, blank=True)
    last_arrival_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return f"study {self.study_instance_uid}"


class Series(models.Model):
    series_instance_uid = models.CharField(max_length=64, unique=True)
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    modality = models.CharField(max_length=16, blank=True, default="")
    series_number = models.IntegerField(null=True, blank=True)
    description = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return f"series {self.series_instance_uid}"


class ArrivalSource(models.TextChoices):
    STORE = "STORE", "C-STORE"
    IAN = "IAN", "Instance Availability Notification"


class Instance(models.Model):
    """One SOP instance known to have arrived, by C-STORE or IAN."""

    sop_instance_uid = models.CharField(max_length=64, unique=True)
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances")
    sop_class_uid = models.CharField(max_length=64, blank=True, default="")
    instance_number = models.IntegerField(null=True, blank=True)
    source = models.CharField(max_length=8, choices=ArrivalSource.choices)
    source_ae_title = models.CharField(max_length=16, blank=True, default="")
    availability = models.CharField(max_length=16, blank=True, default="ONLINE")
    retrieve_ae_title = models.CharField(max_length=16, blank=True, default="")
    file_path = models.CharField(max_length=500, blank=True, default="")
    received_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"instance {self.sop_instance_uid} ({self.source})"


class Report(models.Model):
    """One version of an exam's report. Signed versions are never changed; an amendment is a
    new version that supersedes the previous one."""

    requested_procedure = models.ForeignKey(RequestedProcedure, on_delete=models.PROTECT, related_name="reports")
    version = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=ReportStatus.choices)
    findings = models.TextField(blank=True, default="")
    impression = models.TextField(blank=True, default="")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reports")
    signed_at = models.DateTimeField(null=True, blank=True)
    supersedes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="superseded_by"
    )
    # For an AMENDED version: "addendum" (text added to the final) or "correction" (text replaced).
    amendment = models.CharField(max_length=16, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["requested_procedure", "version"], name="report_version_unique"),
        ]
        ordering = ["requested_procedure", "version"]
        permissions = [("sign_report", "Can sign reports (preliminary, final, amendments)")]

    def __str__(self) -> str:
        return f"report v{self.version} {self.status} for {self.requested_procedure.accession_number}"


class OutboxStatus(models.TextChoices):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


class OutboundMessage(models.Model):
    """The outbox: a message to deliver, written in the transaction that caused it.

    Delivery tasks pick rows up after commit; a periodic sweep re-queues rows a broker or
    worker outage left behind. Rows of one exam are delivered in id order.
    """

    destination = models.CharField(max_length=16, help_text="oru, fhir, orm, pacs")
    requested_procedure = models.ForeignKey(
        RequestedProcedure, null=True, blank=True, on_delete=models.PROTECT, related_name="outbound_messages"
    )
    report = models.ForeignKey(
        Report, null=True, blank=True, on_delete=models.PROTECT, related_name="outbound_messages"
    )
    # Stable id the receiver can de-duplicate on (MSH-10, FHIR resource id, ...).
    message_control_id = models.CharField(max_length=64, unique=True)
    payload = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=OutboxStatus.choices, default=OutboxStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # While a worker is sending the row: until when its claim holds (ris.outbox.claim).
    claimed_until = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.destination} {self.message_control_id} ({self.status})"


class ActorKind(models.TextChoices):
    USER = "user"
    AE = "ae", "DICOM AE"
    HL7 = "hl7", "HL7 sender"
    SYSTEM = "system"


class AuditEvent(models.Model):
    """Who did what to which exam or patient, when, from where, with what outcome
    (modelled on DICOM PS3.15 / IHE ATNA audit messages)."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor_kind = models.CharField(max_length=8, choices=ActorKind.choices)
    actor = models.CharField(max_length=150, help_text="username, AE title or MSH-3^MSH-4")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    source_address = models.CharField(max_length=64, blank=True, default="")
    action = models.CharField(max_length=48, db_index=True)
    outcome = models.CharField(max_length=16, default="success")
    requested_procedure = models.ForeignKey(
        RequestedProcedure, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    patient = models.ForeignKey(Patient, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [models.Index(fields=["requested_procedure", "at"])]
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action}"


class WorkerHeartbeat(models.Model):
    """Written by a Celery task: proof that the broker delivers and a worker runs tasks."""

    token = models.CharField(max_length=64, unique=True)
    worker = models.CharField(max_length=150, blank=True, default="")
    at = models.DateTimeField(auto_now=True, db_index=True)

    def __str__(self) -> str:
        return f"heartbeat {self.token} from {self.worker}"


class ProcedureType(models.Model):
    """The procedure catalogue: what can be ordered, on which modality, for how long."""

    code = models.CharField(max_length=16)
    scheme = models.CharField(max_length=16, default="LOCAL")
    description = models.CharField(max_length=64)
    modality = models.CharField(max_length=16)
    duration_minutes = models.PositiveIntegerField(default=20)
    active = models.BooleanField(default=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["code", "scheme"], name="procedure_code_unique_per_scheme")]
        ordering = ["modality", "description"]

    def __str__(self) -> str:
        return f"{self.code} {self.description} ({self.modality})"


class StationRule(models.Model):
    """Which station (AE title) gets a step that arrives without one: the first enabled rule,
    by priority, whose modality and (optional) procedure code match. No match leaves the
    step for a scheduler to assign in the UI."""

    priority = models.PositiveIntegerField(default=100, help_text="lower runs first")
    modality = models.CharField(max_length=16)
    procedure_code = models.CharField(max_length=16, blank=True, default="", help_text="empty = any procedure")
    station_ae_title = models.CharField(max_length=16)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["priority", "id"]

    def __str__(self) -> str:
        return f"{self.modality}/{self.procedure_code or '*'} -> {self.station_ae_title}"
