"""`manage.py runris`: every part of the RIS as one supervised process tree.

web (gunicorn), MLLP listener, DICOM SCP, Celery worker and Celery beat run as child
processes of ris/supervisor.py, which this command becomes (same pid) once it has read the
settings: Ctrl-C stops every part in order, a child that dies is restarted.
"""

from __future__ import annotations

import os
import sys

from django.conf import settings
from django.core.management.base import BaseCommand

from ris import supervisor


def component_commands() -> dict[str, list[str]]:
    py = sys.executable
    manage = str(settings.BASE_DIR / "manage.py")
    return {
        "web": [
            py,
            "-m",
            "gunicorn",
            "ris.wsgi",
            "--bind",
            f"{settings.RIS_BIND}:{settings.RIS_HTTP_PORT}",
            "--workers",
            str(settings.RIS_WEB_WORKERS),
            "--threads",
            str(settings.RIS_WEB_THREADS),
            "--access-logfile",
            "-",
            "--graceful-timeout",
            "5",
        ],
        "mllp": [py, manage, "runmllp"],
        "dicom": [py, manage, "rundicom"],
        "worker": [
            py,
            "-m",
            "celery",
            "-A",
            "ris",
            "worker",
            "--loglevel",
            "INFO",
            "--pool",
            settings.RIS_WORKER_POOL,
            "--concurrency",
            str(settings.RIS_WORKER_CONCURRENCY),
            "--hostname",
            "ris-worker@%h",
        ],
        "beat": [
            py,
            "-m",
            "celery",
            "-A",
            "ris",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(settings.VAR_DIR / "celerybeat-schedule"),
        ],
    }


class Command(BaseCommand):
    help = (
        "Run the whole RIS (web, MLLP listener, DICOM SCP, Celery worker and beat) as one supervised "
        "tree. Ctrl-C stops every part cleanly."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--without", default="", help="comma-separated components not to start: web,mllp,dicom,worker,beat"
        )

    def handle(self, *args, **options) -> None:
        skip = {name.strip() for name in options["without"].split(",") if name.strip()}
        commands = {name: argv for name, argv in component_commands().items() if name not in skip}

        def write(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        write(
            f"RIS {settings.RIS_AE_TITLE}: web http://{settings.RIS_BIND}:{settings.RIS_HTTP_PORT}/, "
            f"MLLP {settings.RIS_BIND}:{settings.RIS_MLLP_PORT}, DICOM {settings.RIS_BIND}:{settings.RIS_DICOM_PORT}, "
            f"database {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, "
            f"broker {settings.CELERY_BROKER_URL.split(':', 1)[0]}"
        )
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        argv = supervisor.exec_argv(commands, str(settings.BASE_DIR))
        os.execv(argv[0], argv)  # Django and its imports go; the pid and the terminal stay
