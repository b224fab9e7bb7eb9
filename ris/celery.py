"""The Celery application (`celery -A ris worker`, `celery -A ris beat`)."""

import os

from celery import Celery

from ris import broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ris.settings")
broker.register()

app = Celery("ris")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _announce_worker_on_start(sender: Celery, **_kwargs) -> None:
    from celery.signals import worker_ready

    @worker_ready.connect(weak=False)
    def _first_heartbeat(**_kw) -> None:
        # A round trip through the broker as soon as the worker is up, so /healthz turns ok
        # without waiting for beat's first tick.
        sender.send_task("ris.tasks.heartbeat")
