"""Helpers shared by the views: the acting user, exam lookup, workflow errors as form errors."""

from __future__ import annotations

import datetime as dt

from django import forms
from django.shortcuts import get_object_or_404
from django.utils import timezone

from ris.models import RequestedProcedure
from ris.timeutil import site_zone
from ris.workflow import Actor, WorkflowError


def actor_of(request) -> Actor:
    return Actor.for_user(request.user, request.META.get("REMOTE_ADDR", ""))


def get_exam(accession: str) -> RequestedProcedure:
    return get_object_or_404(RequestedProcedure.objects.select_related("order__patient"), accession_number=accession)


def add_workflow_error(form: forms.Form, error: WorkflowError) -> None:
    """Show the workflow's refusal on the form, on the field it names if the form has it."""
    form.add_error(error.field if error.field in form.fields else None, error.reason)


def local_today() -> dt.date:
    return timezone.now().astimezone(site_zone()).date()


def parse_day(value: str | None) -> dt.date:
    try:
        return dt.date.fromisoformat(value) if value else local_today()
    except ValueError:
        return local_today()


def is_poll(request) -> bool:
    return bool(request.headers.get("HX-Request"))


def safe_next(request, default: str) -> str:
    """The ?next= / POST next target if it stays on this site, else the named default view."""
    from django.urls import reverse
    from django.utils.http import url_has_allowed_host_and_scheme

    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return reverse(default)
