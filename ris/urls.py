from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.urls import path
from django.views.generic import RedirectView

from ris import api, health

urlpatterns = [
    path("healthz", health.healthz),
    path("api/exams", api.ExamList.as_view()),
    path("api/exams/<str:accession>/report", api.ExamReport.as_view()),
    path("admin/", admin.site.urls),
    # The web UI's home; until the day board exists it is the admin, behind login like every page.
    path("", login_required(RedirectView.as_view(url="/admin/"))),
]
