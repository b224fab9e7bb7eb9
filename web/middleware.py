"""Request middleware of the UI: the site's time zone for display, and the idle timeout."""

import time

from django.conf import settings
from django.contrib.auth import logout
from django.utils import timezone

from ris.timeutil import site_zone

LAST_ACTIVITY_KEY = "ris_last_activity"


class SiteTimeZoneMiddleware:
    """Every time the UI shows is in RIS_TIME_ZONE (storage stays UTC)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        timezone.activate(site_zone())
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()


class IdleTimeoutMiddleware:
    """Log a user out after RIS_SESSION_IDLE_SECONDS without a click of their own.

    Background refreshes (htmx polling, marked with the X-RIS-Poll header) do not
    count as activity, so a board left open on a shared workstation still times out.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            now = time.time()
            last = request.session.get(LAST_ACTIVITY_KEY, now)
            if now - last > settings.RIS_SESSION_IDLE_SECONDS:
                logout(request)
            elif not request.headers.get("X-RIS-Poll"):
                request.session[LAST_ACTIVITY_KEY] = now
        return self.get_response(request)
