#!/usr/bin/env python3
"""Web UI page cost (issue 7): server time and SQL queries per page as the day grows.

The pages people keep open all day (the day board, refreshed every few seconds by htmx; the
technologist's room worklist; the reading list; the exam search) are rendered in-process by
Django's test client against a fresh database holding N exams scheduled today, N = 40
(a demo day) and N = 400 (a large department). Reported per page: median and p95 render
time and the number of SQL queries. The query count must not grow with N: a page that
issues one query per row would show it here first. There is no independent peer for a RIS
web page; the floor is the login page, which reads no table.

Run alone: `.venv/bin/python bench/bench_ui.py [--quick]`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ("login page (floor)", "/login/", {}, None),
    ("day board (full page)", "/board/", {}, "scheduler"),
    ("day board (htmx poll)", "/board/", {"HTTP_HX_REQUEST": "true", "HTTP_X_RIS_POLL": "1"}, "scheduler"),
    ("day board (poll, unchanged: 304)", "/board/", {"HTTP_HX_REQUEST": "true", "revalidate": True}, "scheduler"),
    ("technologist worklist (poll)", "/technologist/?room=CT1", {"HTTP_HX_REQUEST": "true"}, "technologist"),
    ("reading list (poll)", "/reading/", {"HTTP_HX_REQUEST": "true"}, "radiologist"),
    ("exam search by name", "/exams/?q=nguyen", {}, "scheduler"),
]


def child(n_exams: int, repeats: int) -> dict:
    """Runs with DATABASE_URL pointing at an empty SQLite file: migrate, seed, measure."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ris.settings")
    sys.path.insert(0, str(ROOT))
    django.setup()
    import datetime as dt

    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from ris import workflow
    from ris.timeutil import site_zone
    from worklist.models import Modality

    call_command("migrate", verbosity=0)
    rooms = ["CT1", "MR1", "US1", "CR1"]
    for ae in rooms:
        Modality.objects.create(ae_title=ae, modality=ae[:2], opens_at=dt.time(0, 0), closes_at=dt.time(23, 59))
    actor = workflow.Actor("system", "bench")
    day = timezone.now().astimezone(site_zone()).date()
    first = dt.datetime.combine(day, dt.time(0, 5), tzinfo=site_zone())
    for i in range(n_exams):
        patient = workflow.register_patient(
            actor, f"B{i}", "BENCH", workflow.Demographics(family_name="Nguyễn", given_name=f"Bệnh nhân {i}")
        )
        room = rooms[i % len(rooms)]
        start = first + dt.timedelta(minutes=(i // len(rooms)) * 3)
        request = workflow.OrderRequest(
            procedures=[
                workflow.ProcedureRequest(
                    modality=room[:2],
                    procedure_code="P1",
                    procedure_description="Bench exam",
                    steps=[workflow.StepRequest(modality=room[:2], start=start, station_ae_title=room)],
                )
            ]
        )
        exam = workflow.place_order(actor, patient, request).requested_procedures.get()
        if i % 3 == 0:  # a third read-ready, so the reading list has rows too
            steps = list(exam.scheduled_steps.all())
            performed = workflow.start_performed_step(workflow.Actor.for_ae(room), workflow.new_uid(), steps)
            workflow.complete_performed_step(workflow.Actor.for_ae(room), performed)
            workflow.mark_ready_for_reading(actor, exam)
    users = {}
    for role in ("scheduler", "technologist", "radiologist"):
        users[role] = User.objects.create_user(role)
        users[role].groups.add(Group.objects.get(name=role))
    results = {}
    for label, path, headers, role in PAGES:
        client = Client()
        if role:
            client.force_login(users[role])
        headers = dict(headers)
        revalidate = headers.pop("revalidate", False)
        warm = client.get(path, **headers)  # warm caches and templates
        if revalidate:  # the browser's conditional GET with the ETag it got last time
            headers["HTTP_IF_NONE_MATCH"] = warm["ETag"]
        times, queries = [], 0
        for _ in range(repeats):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = client.get(path, **headers)
                times.append((time.perf_counter() - started) * 1000)
            assert response.status_code in (200, 304), (path, response.status_code)
            queries = len(captured.captured_queries)
        times.sort()
        results[label] = {
            "p50": statistics.median(times),
            "p95": times[min(len(times) - 1, int(len(times) * 0.95))],
            "queries": queries,
        }
    return results


def measure(n_exams: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RIS_")}
        env.update({"DATABASE_URL": f"sqlite:///{tmp}/bench-ui.sqlite3", "RIS_LOG_LEVEL": "WARNING"})
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n_exams), str(repeats)],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=ROOT,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> str:
    sizes = [40, 120] if quick else [40, 400]
    repeats = 10 if quick else 40
    measured = {n: measure(n, repeats) for n in sizes}
    lines = [
        "## Web UI: server time and SQL queries per page (issue 7)",
        "",
        f"Django test client, in-process, SQLite; {repeats} requests per page after one warm-up; "
        f"N exams scheduled today ({' and '.join(str(n) for n in sizes)}), a third of them ready for reading.",
        "",
        "| page | " + " | ".join(f"N={n}: p50 ms | p95 ms | queries" for n in sizes) + " |",
        "|---|" + "---|---|---|" * len(sizes),
    ]
    for label, *_ in PAGES:
        cells = []
        for n in sizes:
            r = measured[n][label]
            cells.append(f"{r['p50']:.1f} | {r['p95']:.1f} | {r['queries']}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Query counts that stay the same from the small to the large day mean no page issues a "
        "query per row; render time grows with the rows drawn (the board draws every exam of the day).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        print(run("--quick" in sys.argv))
