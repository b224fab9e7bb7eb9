"""URLs of the read-only FHIR R4 API, mounted at /fhir/ by ris/urls.py."""

from django.urls import path

from reports import fhir_api

urlpatterns = [
    path("metadata", fhir_api.Metadata.as_view()),
    path("<str:resource_type>", fhir_api.Search.as_view()),
    path("<str:resource_type>/<str:resource_id>", fhir_api.Read.as_view()),
]
