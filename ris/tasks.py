"""Housekeeping tasks of the domain."""

import socket

from celery import shared_task

from ris.models import WorkerHeartbeat


@shared_task(name="ris.tasks.heartbeat")
def heartbeat(token: str = "") -> str:
    """Record that a worker ran a task: /healthz reads the newest one, tests send their own
    token and wait for it. Idempotent: the same token twice is one row."""
    token = token or f"beat-{socket.gethostname()}"
    WorkerHeartbeat.objects.update_or_create(token=token, defaults={"worker": socket.gethostname()})
    return token
