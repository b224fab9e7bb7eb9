"""Home and day board (issue 7 §2)."""

import datetime as dt

from django.shortcuts import redirect, render

from web.access import VIEW_EXAMS, home_url_name, requires
from web.board import day_board
from web.views.common import parse_day


@requires()
def home(request):
    return redirect(home_url_name(request.user))


@requires(VIEW_EXAMS)
def board(request):
    day = parse_day(request.GET.get("day"))
    context = {
        "day": day,
        "previous_day": day - dt.timedelta(days=1),
        "next_day": day + dt.timedelta(days=1),
        **day_board(day),
    }
    template = "web/board_live.html" if request.headers.get("HX-Request") else "web/board.html"
    return render(request, template, context)
