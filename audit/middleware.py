"""Audit of patient data viewed over HTTP (issue 9, PS3.15 A.5.3.2 Begin Transferring / Query):
exam, patient, report and HL7 message pages, the JSON API and FHIR reads, each answered 2xx to
a GET, become one AuditEvent "patient_data.viewed" with the user, address and what was seen."""

from __future__ import annotations

import logging

from django.urls import Resolver404, resolve

log = logging.getLogger(__name__)

# URL names of the UI pages that show one patient's data, and path prefixes of the APIs.
AUDITED_VIEWS = {"exam_detail", "patient_detail", "report_editor", "hl7_message", "exam_list", "patient_list"}
AUDITED_PREFIXES = ("/api/exams", "/fhir/")


class PatientDataAccessMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.method == "GET" and 200 <= response.status_code < 300:
            try:
                self._record(request, response)
            except Exception:  # the page was served: a failed audit is logged, not shown
                log.exception("could not audit %s", request.path)
        return response

    def _record(self, request, response) -> None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return
        api = request.path_info.startswith(AUDITED_PREFIXES) and not request.path_info.endswith("/metadata")
        if match.url_name not in AUDITED_VIEWS and not api:
            return
        from ris.models import Patient, RequestedProcedure
        from ris.workflow import Actor, audit

        user = _user_of(request)
        if user is None:
            return
        address = request.META.get("REMOTE_ADDR", "")
        actor = Actor.for_user(user, address)
        exam = patient = None
        if "accession" in match.kwargs:
            exam = RequestedProcedure.objects.filter(accession_number=match.kwargs["accession"]).first()
        elif match.url_name == "patient_detail":
            patient = Patient.objects.filter(pk=match.kwargs["pk"]).first()
        query = request.GET.urlencode()[:500]
        audit(
            actor, "patient_data.viewed", exam=exam, patient=patient, view=match.url_name or request.path, query=query
        )


def _user_of(request):
    """The session user, or the owner of the API token (DRF authenticates inside the view)."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return user
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header.startswith("Token "):
        from rest_framework.authtoken.models import Token

        token = Token.objects.select_related("user").filter(key=header[6:].strip()).first()
        return token.user if token else None
    return None
