from django.contrib import admin
from django.urls import include, path

from ris import api, health

urlpatterns = [
    path("healthz", health.healthz),
    path("api/exams", api.ExamList.as_view()),
    path("api/exams/<str:accession>/report", api.ExamReport.as_view()),
    path("fhir/", include("reports.urls")),  # read-only FHIR R4 API (issue 6)
    path("admin/", admin.site.urls),
    # The web UI (issue 7): day board at the root, every page behind login; language switcher.
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("web.urls")),
]
