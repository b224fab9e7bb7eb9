"""Template context for every page: the navigation this user may see, the site's zone."""

from django.conf import settings
from django.urls import reverse

from web.access import NAVIGATION


def navigation(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    current = request.path
    items = []
    for item in NAVIGATION:
        if user.has_perm(item.perm):
            url = reverse(item.url_name)
            items.append({"url": url, "label": item.label, "active": current.startswith(url) and url != "/"})
    roles = sorted(user.groups.values_list("name", flat=True))
    return {
        "nav_items": items,
        "user_roles": roles,
        "site_time_zone": settings.RIS_TIME_ZONE,
        "poll_seconds": settings.RIS_UI_POLL_SECONDS,
    }
