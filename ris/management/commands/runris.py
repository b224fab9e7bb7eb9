"""`manage.py runris`: every part of the RIS as one supervised process tree.

web (gunicorn), MLLP listener, DICOM SCP, Celery worker and Celery beat run as child
processes, each in its own session so that Ctrl-C reaches only this supervisor, which then
stops them in order. A child that dies is restarted with a growing back-off. Every output
line is prefixed with the component's name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.core.management.base import BaseCommand

STOP_GRACE_SECONDS = 10
MAX_BACKOFF_SECONDS = 30


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
            "2",
            "--threads",
            "4",
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
            "--concurrency",
            "2",
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


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    output_threads: list[threading.Thread] = field(default_factory=list)


class Supervisor:
    def __init__(self, commands: dict[str, list[str]], write) -> None:
        self.children = [Child(name, argv) for name, argv in commands.items()]
        self.write = write
        self.stopping = threading.Event()
        self.width = max(len(name) for name in commands)

    def log(self, name: str, line: str) -> None:
        self.write(f"{name:<{self.width}} | {line}")

    def start(self, child: Child) -> None:
        child.process = subprocess.Popen(
            child.argv,
            cwd=settings.BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.log(child.name, f"started (pid {child.process.pid}): {' '.join(child.argv[1:])}")
        thread = threading.Thread(target=self.pump, args=(child, child.process), daemon=True)
        thread.start()
        child.output_threads = [thread]

    def pump(self, child: Child, process: subprocess.Popen) -> None:
        for raw in process.stdout:
            self.log(child.name, raw.decode("utf-8", errors="replace").rstrip())

    def run(self) -> None:
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            self.start(child)
        while not self.stopping.wait(0.5):
            for child in self.children:
                self.watch(child)
        self.stop_all()

    def watch(self, child: Child) -> None:
        now = time.monotonic()
        if child.process is None:
            if now >= child.next_start:
                self.start(child)
            return
        code = child.process.poll()
        if code is None:
            return
        child.restarts += 1
        backoff = min(2 ** min(child.restarts, 5), MAX_BACKOFF_SECONDS)
        self.log(child.name, f"exited with code {code}; restarting in {backoff} s")
        child.process, child.next_start = None, now + backoff

    def stop_all(self) -> None:
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in running:
            self.log(child.name, "stopping")
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in running:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(child.name, f"still running after {STOP_GRACE_SECONDS} s; killing")
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
            for thread in child.output_threads:
                thread.join(timeout=1)
            self.log(child.name, f"stopped (code {child.process.returncode})")


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

        supervisor = Supervisor(commands, write)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: supervisor.stopping.set())
        write(
            f"RIS {settings.RIS_AE_TITLE}: web http://{settings.RIS_BIND}:{settings.RIS_HTTP_PORT}/, "
            f"MLLP {settings.RIS_BIND}:{settings.RIS_MLLP_PORT}, DICOM {settings.RIS_BIND}:{settings.RIS_DICOM_PORT}, "
            f"database {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, "
            f"broker {settings.CELERY_BROKER_URL.split(':', 1)[0]}"
        )
        supervisor.run()
        write("RIS stopped")
