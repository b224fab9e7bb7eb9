"""Manual order entry (issue 7 §4): find or register the patient, order from the catalogue.

The order goes through ris.workflow.place_order, like an HL7 order; its exams wait ORDERED
and the scheduler is taken to the first one's slot picker.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib import messages
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _

from ris import workflow
from ris.models import Patient, fold_for_search
from web.access import SCHEDULE, VIEW_PATIENTS, requires
from web.forms import OrderForm, PatientForm
from web.views.common import actor_of, add_workflow_error

SEARCH_LIMIT = 20


def search_patients(query: str, limit: int = SEARCH_LIMIT):
    """Patients (not merged away) whose id or any identifier starts with `query`, or whose name
    contains it regardless of diacritics ("nguyen thi dao" finds "Nguyễn Thị Đào")."""
    query = query.strip()
    if not query:
        return Patient.objects.none()
    folded = fold_for_search(query)
    by_name = Q()
    for word in folded.replace("^", " ").split():
        by_name &= Q(name_search__contains=word)
    return (
        Patient.objects.filter(merged_into=None)
        .filter(
            Q(patient_id__istartswith=query)
            | Q(identifiers__value__istartswith=query)
            | (by_name if by_name else Q(pk=None))
        )
        .distinct()
        .order_by("family_name", "given_name")[:limit]
    )


@requires(VIEW_PATIENTS)
def patient_search(request):
    """htmx partial: the patients matching ?q=, each with a "choose" link."""
    return render(
        request,
        "web/_patient_search.html",
        {"patients": search_patients(request.GET.get("q", "")), "query": request.GET.get("q", "")},
    )


def new_patient_id() -> str:
    """An id for a walk-in registered at the RIS (issuer RIS_FACILITY)."""
    return f"R{uuid.uuid4().int % 10**10:010d}"


@requires(SCHEDULE)
def order_new(request):
    """Step 1 (no ?patient=): find or register the patient. Step 2: the order itself."""
    patient = None
    if request.GET.get("patient"):
        patient = get_object_or_404(Patient, pk=request.GET["patient"], merged_into=None)
    patient_form = PatientForm(prefix="p")
    order_form = OrderForm(prefix="o")
    if request.method == "POST" and "register" in request.POST:
        patient_form = PatientForm(request.POST, prefix="p")
        if patient_form.is_valid():
            data = dict(patient_form.cleaned_data)
            patient_id = data.pop("patient_id") or new_patient_id()
            issuer = data.pop("issuer") or settings.RIS_FACILITY
            try:
                patient = workflow.register_patient(
                    actor_of(request), patient_id, issuer, workflow.Demographics(**data)
                )
            except workflow.WorkflowError as error:
                add_workflow_error(patient_form, error)
            else:
                return redirect(f"{request.path}?patient={patient.pk}")
    elif request.method == "POST" and patient is not None:
        order_form = OrderForm(request.POST, prefix="o")
        if order_form.is_valid():
            order = _place(request, patient, order_form)
            if order is not None:
                exams = list(order.requested_procedures.order_by("id"))
                messages.success(
                    request,
                    _("Order placed: %(accessions)s. Choose a slot.")
                    % {"accessions": ", ".join(e.accession_number for e in exams)},
                )
                return redirect("web:schedule_exam", accession=exams[0].accession_number)
    return render(
        request,
        "web/order_new.html",
        {"patient": patient, "patient_form": patient_form, "order_form": order_form},
    )


def _place(request, patient: Patient, form: OrderForm):
    data = form.cleaned_data
    procedures = [
        workflow.ProcedureRequest(
            modality=p.modality,
            procedure_code=p.code,
            procedure_code_scheme=p.scheme,
            procedure_description=p.description,
            steps=[
                workflow.StepRequest(
                    modality=p.modality,
                    description=p.description,
                    protocol_codes=[{"code": p.code, "scheme": p.scheme, "meaning": p.description}],
                )
            ],
        )
        for p in data["procedures"]
    ]
    order_request = workflow.OrderRequest(
        placer_order_number=data["placer_order_number"],
        placer_issuer="HIS" if data["placer_order_number"] else "",
        filler_issuer=settings.RIS_FACILITY,
        referring_physician=data["referring_physician"],
        ordering_physician=data["referring_physician"],
        reason=data["reason"],
        priority=data["priority"],
        patient_location=data["patient_location"],
        allergies=data["allergies"],
        medical_alerts=data["medical_alerts"],
        procedures=procedures,
    )
    try:
        return workflow.place_order(actor_of(request), patient, order_request)
    except workflow.WorkflowError as error:
        add_workflow_error(form, error)
        return None
