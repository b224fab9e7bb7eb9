"""The stack under fault: runmllp, rundicom and a Celery worker (with beat, for the sweeps) as
subprocesses that can be SIGKILLed and restarted on the same ports and queue, plus the
machine's shared RabbitMQ and PostgreSQL, which are always restarted in a finally block."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wait_for_port(port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


class Process:
    """One RIS process that can be killed (SIGKILL, no goodbye) and started again."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path, port: int | None = None) -> None:
        self.name, self.argv, self.env, self.logs, self.port = name, argv, env, logs, port
        self.popen: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Process:
        self.starts += 1
        with open(self.logs / f"{self.name}-{self.starts}.log", "wb") as log:
            self.popen = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if self.port is not None and not wait_for_port(self.port):
            raise RuntimeError(f"{self.name} did not listen on {self.port}")
        return self

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGINT)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


def manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


def worker_argv(logs: Path) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "ris", "worker", "--concurrency", "2", "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", "-n", f"faults-{uuid.uuid4().hex[:6]}@%h",
        "--beat", "--schedule", str(logs / f"beat-{uuid.uuid4().hex[:6]}"),
    ]  # fmt: skip


class Stack:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.mllp = Process("mllp", manage("runmllp"), env, logs, int(env["RIS_MLLP_PORT"]))
        self.dicom = Process("dicom", manage("rundicom"), env, logs, int(env["RIS_DICOM_PORT"]))
        self.worker = Process("worker", worker_argv(logs), env, logs)

    @property
    def dicom_port(self) -> int:
        return int(self.env["RIS_DICOM_PORT"])

    @property
    def mllp_address(self) -> tuple[str, int]:
        return "127.0.0.1", int(self.env["RIS_MLLP_PORT"])

    def start(self) -> Stack:
        for process in (self.mllp, self.dicom, self.worker):
            process.start()
        return self

    def stop(self) -> None:
        for process in (self.worker, self.dicom, self.mllp):
            process.stop()


# --- the machine's shared services ----------------------------------------------------------


@contextmanager
def rabbitmq_stopped(seconds: float):
    """`rabbitmqctl stop_app` for `seconds`, then `start_app` whatever happens."""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([ctl, "stop_app"], check=True, capture_output=True, timeout=60)
    try:
        time.sleep(seconds)
        yield
    finally:
        subprocess.run([ctl, "start_app"], check=True, capture_output=True, timeout=120)
        subprocess.run([ctl, "await_startup"], capture_output=True, timeout=120)


def postgres_restart() -> None:
    """Restart the PostgreSQL cluster (every connection is cut; the cluster comes back)."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
