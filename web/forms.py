"""Forms of the UI. They check the shape of input; the workflow core decides what is allowed."""

from __future__ import annotations

import datetime as dt

from django import forms
from django.utils.translation import gettext_lazy as _

from ris.models import Priority, ProcedureType, Sex, StationRule
from ris.timeutil import site_zone
from web.labels import PRIORITY_LABELS
from worklist.models import Modality


class ScheduleForm(forms.Form):
    """A slot for an exam: a room (station AE title) and a local date and time."""

    station_ae_title = forms.ChoiceField(label=_("Room"))
    date = forms.DateField(label=_("Date"), widget=forms.DateInput(attrs={"type": "date"}))
    time = forms.TimeField(label=_("Time"), widget=forms.TimeInput(attrs={"type": "time", "step": 300}))

    def __init__(self, *args, rooms: list[Modality], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rooms = {r.ae_title: r for r in rooms}
        self.fields["station_ae_title"].choices = [
            (r.ae_title, f"{r.ae_title} - {r.location or r.station_name or r.modality}") for r in rooms
        ]

    @property
    def start(self) -> dt.datetime:
        return dt.datetime.combine(self.cleaned_data["date"], self.cleaned_data["time"], tzinfo=site_zone())

    @property
    def room(self) -> Modality:
        return self.rooms[self.cleaned_data["station_ae_title"]]


class ReasonForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), max_length=200, required=False)


class PatientForm(forms.Form):
    """Register a walk-in or update a patient: the RIS assigns an id when none is given."""

    patient_id = forms.CharField(label=_("Patient ID"), max_length=64, required=False)
    issuer = forms.CharField(label=_("Issuer of patient ID"), max_length=64, required=False)
    family_name = forms.CharField(label=_("Family name"), max_length=64)
    middle_name = forms.CharField(label=_("Middle name"), max_length=64, required=False)
    given_name = forms.CharField(label=_("Given name"), max_length=64)
    birth_date = forms.DateField(label=_("Birth date"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    sex = forms.ChoiceField(
        label=_("Sex"),
        required=False,
        choices=[("", _("unknown")), (Sex.FEMALE, _("female")), (Sex.MALE, _("male")), (Sex.OTHER, _("other"))],
    )


class OrderForm(forms.Form):
    """An order with one or more procedures from the catalogue."""

    procedures = forms.ModelMultipleChoiceField(
        label=_("Procedures"),
        queryset=ProcedureType.objects.filter(active=True),
        widget=forms.CheckboxSelectMultiple,
    )
    priority = forms.ChoiceField(label=_("Priority"), initial=Priority.ROUTINE)
    referring_physician = forms.CharField(label=_("Referring physician"), max_length=200, required=False)
    reason = forms.CharField(label=_("Reason for the exam"), max_length=200, required=False)
    placer_order_number = forms.CharField(label=_("HIS order number (if any)"), max_length=64, required=False)
    patient_location = forms.CharField(label=_("Patient location"), max_length=64, required=False)
    allergies = forms.CharField(label=_("Allergies"), max_length=200, required=False)
    medical_alerts = forms.CharField(label=_("Medical alerts"), max_length=200, required=False)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["priority"].choices = [(p, PRIORITY_LABELS[p]) for p in Priority.values]
        self.fields["procedures"].label_from_instance = lambda p: (
            f"{p.modality} · {p.description} ({p.code}, {p.duration_minutes} min)"
        )


class ReportForm(forms.Form):
    findings = forms.CharField(label=_("Findings"), required=False, widget=forms.Textarea(attrs={"rows": 12}))
    impression = forms.CharField(label=_("Impression"), required=False, widget=forms.Textarea(attrs={"rows": 5}))


class AcceptForm(forms.Form):
    """Accept an exam as it is (images missing, extra instances): the reason is audited."""

    reason = forms.CharField(label=_("Why the exam can be read as it is"), max_length=200)


class StationRuleForm(forms.ModelForm):
    class Meta:
        model = StationRule
        fields = ["priority", "modality", "procedure_code", "station_ae_title", "enabled"]
        labels = {
            "priority": _("Priority"),
            "modality": _("Modality"),
            "procedure_code": _("Procedure code"),
            "station_ae_title": _("Station AE title"),
            "enabled": _("Enabled"),
        }


class RoomHoursForm(forms.ModelForm):
    class Meta:
        model = Modality
        fields = ["opens_at", "closes_at", "location", "enabled"]
        labels = {
            "opens_at": _("Opens at"),
            "closes_at": _("Closes at"),
            "location": _("Location"),
            "enabled": _("Enabled"),
        }
        widgets = {
            "opens_at": forms.TimeInput(attrs={"type": "time"}),
            "closes_at": forms.TimeInput(attrs={"type": "time"}),
        }


class ProcedureTypeForm(forms.ModelForm):
    class Meta:
        model = ProcedureType
        fields = ["code", "scheme", "description", "modality", "duration_minutes", "active"]
        labels = {
            "code": _("Code"),
            "scheme": _("Scheme"),
            "description": _("Description"),
            "modality": _("Modality"),
            "duration_minutes": _("Minutes"),
            "active": _("Active"),
        }
