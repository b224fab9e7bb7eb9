"""The JSON API of contract.md: exams and report sign-off, with token authentication."""

import datetime as dt

from django.db.models import Count, IntegerField, Min, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.shortcuts import get_object_or_404
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ris import workflow
from ris.models import ExpectedInstance, Instance, Report, RequestedProcedure
from ris.timeutil import local_day_bounds, to_local

API_PAGE_LIMIT = 500
WORKFLOW_ERROR_STATUS = {
    "permission_denied": status.HTTP_403_FORBIDDEN,
    "not_found": status.HTTP_404_NOT_FOUND,
    "invalid": status.HTTP_400_BAD_REQUEST,
}


def _count_per_exam(queryset, exam_path: str, counted: str) -> Subquery:
    """A correlated COUNT(DISTINCT counted) of queryset rows belonging to the outer exam."""
    rows = (
        queryset.filter(**{exam_path: OuterRef("pk")})
        .order_by()
        .values(exam_path)
        .annotate(n=Count(counted, distinct=True))
        .values("n")
    )
    return Coalesce(Subquery(rows, output_field=IntegerField()), Value(0))


def exams_with_counts():
    """Exams with their patient, first scheduled start and image counts, in one query."""
    latest_report = Report.objects.filter(requested_procedure=OuterRef("pk")).order_by("-version").values("status")[:1]
    return RequestedProcedure.objects.select_related("order__patient").annotate(
        scheduled_start=Min("scheduled_steps__start"),
        images_expected=_count_per_exam(
            ExpectedInstance.objects.all(), "performed_step__scheduled_steps__requested_procedure", "sop_instance_uid"
        ),
        images_received=_count_per_exam(Instance.objects.all(), "series__study__requested_procedure", "pk"),
        report_status=Subquery(latest_report),
    )


def exam_json(exam: RequestedProcedure) -> dict:
    patient = exam.order.patient
    start = to_local(exam.scheduled_start)
    return {
        "accession": exam.accession_number,
        "status": exam.status,
        "patient_id": patient.patient_id,
        "patient_name": patient.dicom_name,
        "study_instance_uid": exam.study_instance_uid,
        "modality": exam.modality,
        "procedure": exam.procedure_description,
        "scheduled_start": start.isoformat() if start else None,
        "images": {"expected": exam.images_expected, "received": exam.images_received},
        "report_status": exam.report_status,
    }


class ExamList(APIView):
    """GET /api/exams?accession=&patient_id=&status=&date=YYYY-MM-DD&modality="""

    def get(self, request: Request) -> Response:
        exams = exams_with_counts().order_by("scheduled_start", "pk")
        params = request.query_params
        if params.get("accession"):
            exams = exams.filter(accession_number=params["accession"])
        if params.get("patient_id"):
            exams = exams.filter(order__patient__patient_id=params["patient_id"])
        if params.get("status"):
            exams = exams.filter(status__in=params["status"].upper().split(","))
        if params.get("modality"):
            exams = exams.filter(modality=params["modality"].upper())
        if params.get("date"):
            try:
                day = dt.date.fromisoformat(params["date"])
            except ValueError:
                return Response({"error": "date must be YYYY-MM-DD"}, status=status.HTTP_400_BAD_REQUEST)
            start, end = local_day_bounds(day)
            exams = exams.filter(scheduled_steps__start__gte=start, scheduled_steps__start__lt=end).distinct()
        return Response([exam_json(e) for e in exams[:API_PAGE_LIMIT]])


class ReportInput(serializers.Serializer):
    findings = serializers.CharField(allow_blank=True, default="", trim_whitespace=False)
    impression = serializers.CharField(allow_blank=True, default="", trim_whitespace=False)
    status = serializers.ChoiceField(choices=["draft", "preliminary", "final"])
    # Only for a final on a signed exam: "correction" (default) or "addendum".
    amendment = serializers.ChoiceField(choices=["addendum", "correction"], required=False, default="")


class ExamReport(APIView):
    """POST /api/exams/<accession>/report {"findings", "impression", "status"} -> 201."""

    def post(self, request: Request, accession: str) -> Response:
        exam = get_object_or_404(RequestedProcedure, accession_number=accession)
        data = ReportInput(data=request.data)
        if not data.is_valid():
            return Response({"error": data.errors}, status=status.HTTP_400_BAD_REQUEST)
        actor = workflow.Actor.for_user(request.user, request.META.get("REMOTE_ADDR", ""))
        values = data.validated_data
        try:
            if values["status"] == "draft":
                report = workflow.save_report_draft(
                    actor, exam, findings=values["findings"], impression=values["impression"]
                )
            else:
                report = workflow.sign_report(
                    actor,
                    exam,
                    findings=values["findings"],
                    impression=values["impression"],
                    final=values["status"] == "final",
                    amendment=values["amendment"],
                )
        except workflow.WorkflowError as exc:
            code = WORKFLOW_ERROR_STATUS.get(exc.code, status.HTTP_409_CONFLICT)
            return Response({"error": exc.reason, "code": exc.code}, status=code)
        exam.refresh_from_db()
        return Response(
            {
                "accession": exam.accession_number,
                "exam_status": exam.status,
                "version": report.version,
                "status": report.status,
                "signed_at": report.signed_at.isoformat() if report.signed_at else None,
            },
            status=status.HTTP_201_CREATED,
        )
