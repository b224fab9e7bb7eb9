"""Scheduling settings (issue 7 §3): station-assignment rules, room opening hours and the
procedure catalogue with durations. Configuration, not exam state, so edited directly."""

from __future__ import annotations

from django.contrib import messages
from django.forms import modelformset_factory
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from ris.models import ProcedureType, StationRule
from web.access import SCHEDULE, requires
from web.forms import ProcedureTypeForm, RoomHoursForm, StationRuleForm
from worklist.models import Modality

RuleFormSet = modelformset_factory(StationRule, form=StationRuleForm, extra=1, can_delete=True)
RoomFormSet = modelformset_factory(Modality, form=RoomHoursForm, extra=0)
CatalogueFormSet = modelformset_factory(ProcedureType, form=ProcedureTypeForm, extra=1, can_delete=True)

SECTIONS = {
    "rules": (RuleFormSet, StationRule.objects.all, _("Station rules saved.")),
    "rooms": (RoomFormSet, Modality.objects.all, _("Rooms saved.")),
    "catalogue": (CatalogueFormSet, ProcedureType.objects.all, _("Procedure catalogue saved.")),
}


@requires(SCHEDULE)
def settings_page(request):
    formsets = {name: cls(queryset=query(), prefix=name) for name, (cls, query, _done) in SECTIONS.items()}
    section = request.POST.get("section")
    if request.method == "POST" and section in SECTIONS:
        cls, query, done = SECTIONS[section]
        formset = cls(request.POST, queryset=query(), prefix=section)
        if formset.is_valid():
            formset.save()
            messages.success(request, done)
            return redirect(f"{request.path}#{section}")
        formsets[section] = formset
    return render(request, "web/settings.html", {"formsets": formsets})
