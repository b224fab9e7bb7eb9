"""GET /healthz: one line per component, for load balancers and operators."""

import socket
import time

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone
from kombu import Connection

from ris.models import WorkerHeartbeat

HEARTBEAT_MAX_AGE_SECONDS = 120


def check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def check_broker() -> str:
    with Connection(settings.CELERY_BROKER_URL, transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS) as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return "ok"


def check_port(port: int) -> str:
    host = "127.0.0.1" if settings.RIS_BIND in ("0.0.0.0", "") else settings.RIS_BIND
    with socket.create_connection((host, port), timeout=2):
        return "ok"


def check_worker() -> str:
    newest = WorkerHeartbeat.objects.order_by("-at").first()
    if newest is None:
        return "no heartbeat yet"
    age = (timezone.now() - newest.at).total_seconds()
    return "ok" if age <= HEARTBEAT_MAX_AGE_SECONDS else f"last heartbeat {int(age)} s ago"


def healthz(request):
    """200 while the database answers (status "ok" when every component does, else "degraded");
    503 when the database is down, since nothing works without it."""
    started = time.monotonic()
    checks = {
        "database": check_database,
        "broker": check_broker,
        "mllp": lambda: check_port(settings.RIS_MLLP_PORT),
        "dicom": lambda: check_port(settings.RIS_DICOM_PORT),
        "worker": check_worker,
    }
    body: dict[str, object] = {}
    for name, check in checks.items():
        try:
            body[name] = check()
        except Exception as exc:  # a health check reports failures, it does not raise them
            body[name] = f"error: {exc.__class__.__name__}: {exc}"[:200]
    healthy = all(v == "ok" for v in body.values())
    body = {
        "status": "ok" if healthy else "degraded",
        **body,
        "checked_in_ms": round((time.monotonic() - started) * 1000),
    }
    return JsonResponse(body, status=200 if body["database"] == "ok" else 503)
