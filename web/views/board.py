"""Home and day board (issue 7 §2). The board's htmx poll is a conditional GET: while nothing
on the board changed, the browser's revalidation gets 304 and the board is not rendered."""

import datetime as dt

from django.shortcuts import redirect, render
from django.utils.cache import patch_cache_control
from django.utils.translation import get_language
from django.views.decorators.http import condition

from web.access import VIEW_EXAMS, home_url_name, requires
from web.board import board_fingerprint, day_board
from web.views.common import parse_day


@requires()
def home(request):
    return redirect(home_url_name(request.user))


def _poll_etag(request) -> str | None:
    if not request.headers.get("HX-Request"):
        return None
    day = parse_day(request.GET.get("day"))
    return f'"{board_fingerprint(day)}-{request.user.pk}-{get_language()}"'


@requires(VIEW_EXAMS)
@condition(etag_func=_poll_etag)
def board(request):
    day = parse_day(request.GET.get("day"))
    context = {
        "day": day,
        "previous_day": day - dt.timedelta(days=1),
        "next_day": day + dt.timedelta(days=1),
        **day_board(day),
    }
    if request.headers.get("HX-Request"):
        response = render(request, "web/board_live.html", context)
        patch_cache_control(response, private=True, no_cache=True)
        return response
    return render(request, "web/board.html", context)
