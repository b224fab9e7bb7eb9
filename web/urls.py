"""URLs of the web UI (mounted at the site root by ris/urls.py)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from web.views import (
    board,
    exams,
    interfaces,
    orders,
    qa,
    reading,
    scheduling,
    settings_pages,
    statistics,
    technologist,
)

app_name = "web"

urlpatterns = [
    path("", board.home, name="home"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="web/login.html", redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("board/", board.board, name="board"),
    path("schedule/", scheduling.calendar, name="calendar"),
    path("schedule/slot/", scheduling.calendar_slot, name="calendar_slot"),
    path("orders/new/", orders.order_new, name="order_new"),
    path("patients/search/", orders.patient_search, name="patient_search"),
    path("exams/", exams.exam_list, name="exam_list"),
    path("exams/<str:accession>/", exams.exam_detail, name="exam_detail"),
    path("exams/<str:accession>/schedule/", scheduling.schedule_exam, name="schedule_exam"),
    path("exams/<str:accession>/cancel/", scheduling.cancel_exam, name="cancel_exam"),
    path("exams/<str:accession>/discontinue/", scheduling.discontinue_exam, name="discontinue_exam"),
    path("exams/<str:accession>/arrived/", technologist.patient_arrived, name="patient_arrived"),
    path("exams/<str:accession>/accept/", qa.accept_exam, name="accept_exam"),
    path("exams/<str:accession>/keep/", qa.keep_exam, name="keep_exam"),
    path("exams/<str:accession>/reconcile/", qa.reconcile_exam, name="reconcile_exam"),
    path("iid", exams.iid, name="iid"),
    path("patients/", exams.patient_list, name="patient_list"),
    path("patients/<int:pk>/", exams.patient_detail, name="patient_detail"),
    path("patients/<int:pk>/merge/", exams.merge_patient, name="merge_patient"),
    path("technologist/", technologist.technologist, name="technologist"),
    path("reconciliation/", qa.qa, name="qa"),
    path("reading/", reading.reading_list, name="reading_list"),
    path("reading/<str:accession>/", reading.report_editor, name="report_editor"),
    path("interfaces/", interfaces.interfaces, name="interfaces"),
    path("interfaces/hl7/<int:pk>/", interfaces.hl7_message, name="hl7_message"),
    path("interfaces/hl7/<int:pk>/reprocess/", interfaces.hl7_reprocess_message, name="hl7_reprocess"),
    path("interfaces/outbox/retry/", interfaces.outbox_retry, name="outbox_retry"),
    path("interfaces/dicom/", interfaces.dicom_associations, name="dicom_associations"),
    path("statistics/", statistics.statistics, name="statistics"),
    path("settings/", settings_pages.settings_page, name="settings"),
]
