"""Shared fixtures: real listeners and workers as subprocesses on free ports, against the
test database of this run (SQLite file or PostgreSQL, from DATABASE_URL) and the broker
of this run (embedded SQLAlchemy transport or RabbitMQ, from CELERY_BROKER_URL).

Tests that use them take `transactional_db`, so what they write is committed and the
subprocesses see it, and what the subprocesses write is visible to the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.db import connection

if TYPE_CHECKING:
    from tests.test_reports_helpers import HISPeer

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_tool(name: str) -> str:
    """The path of an independent peer tool; missing is a skip locally and a failure in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (apt-get install dcmtk)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def database_url_of_test_db() -> str:
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def inherited_env() -> dict[str, str]:
    """What RIS subprocesses inherit from the test process: no RIS_* setting of the developer's
    shell, and not the async-safety switch the browser tests need in this process only."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RIS_") and k != "DJANGO_ALLOW_ASYNC_UNSAFE"}


@pytest.fixture
def ris_env(transactional_db, tmp_path) -> dict[str, str]:
    """Environment for RIS subprocesses: this test's database, fresh ports, a private queue."""
    env = inherited_env()
    broker = os.environ.get("CELERY_BROKER_URL") or f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"
    env.update(
        {
            "DATABASE_URL": database_url_of_test_db(),
            "CELERY_BROKER_URL": broker,
            "RIS_CELERY_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
            "RIS_BIND": "127.0.0.1",
            "RIS_HTTP_PORT": str(free_port()),
            "RIS_MLLP_PORT": str(free_port()),
            "RIS_DICOM_PORT": str(free_port()),
            "RIS_AE_TITLE": "RIS",
            "RIS_STORAGE_DIR": str(tmp_path / "dicom"),
            "RIS_ARRIVAL_QUIET_SECONDS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port} after {timeout} s")


@contextmanager
def running(
    argv: list[str], env: dict[str, str], log_path: Path, port: int | None = None, timeout: float = 30.0
) -> Iterator[subprocess.Popen]:
    """Run a subprocess in its own process group for the duration of the block; on exit stop it
    with SIGINT (as Ctrl-C would) and kill it if it lingers. Its output goes to log_path."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        if port is not None:
            try:
                wait_for_port(port, process, timeout)
            except Exception as exc:
                raise RuntimeError(
                    f"{exc}\n--- {log_path.name} ---\n{log_path.read_text(errors='replace')[-3000:]}"
                ) from exc
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


@pytest.fixture(scope="module")
def his_peer() -> Iterator[HISPeer]:
    """A plain-socket HIS on MLLP answering AA (tests.test_reports_helpers.HISPeer), one per module;
    a module's own `his` fixture resets what it answers and what it got."""
    from tests.test_reports_helpers import HISPeer  # imports Django models: after settings

    peer = HISPeer("AA").up()
    yield peer
    peer.down()


@pytest.fixture
def mllp_listener(ris_env, tmp_path) -> Iterator[tuple[str, int]]:
    port = int(ris_env["RIS_MLLP_PORT"])
    with running(manage("runmllp"), ris_env, tmp_path / "mllp.log", port):
        yield "127.0.0.1", port


@pytest.fixture
def dicom_scp(ris_env, tmp_path) -> Iterator[tuple[str, int]]:
    port = int(ris_env["RIS_DICOM_PORT"])
    with running(manage("rundicom"), ris_env, tmp_path / "dicom.log", port):
        yield "127.0.0.1", port


def celery_worker_argv() -> list[str]:
    """A Celery worker as CI would run it: one process, a unique name, no gossip or mingle."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "ris",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        "1",
        "--hostname",
        f"test-{uuid.uuid4().hex[:6]}@%h",
        "--without-gossip",
        "--without-mingle",
    ]


@pytest.fixture
def celery_worker_process(ris_env, tmp_path) -> Iterator[subprocess.Popen]:
    with running(celery_worker_argv(), ris_env, tmp_path / "worker.log") as process:
        yield process


def send_task(env: dict[str, str], name: str, *args) -> None:
    """Publish a task on the broker and queue of `env`, as another RIS process would."""
    from celery import Celery
    from django.conf import settings

    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS if env["CELERY_BROKER_URL"].startswith("sqla+sqlite") else {}
    app = Celery("test-sender", broker=env["CELERY_BROKER_URL"], broker_transport_options=options)
    try:
        app.send_task(name, args=list(args), queue=env["RIS_CELERY_QUEUE"])
    finally:
        app.close()


@pytest.fixture(scope="module")
def shared_mllp_listener(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[tuple[str, int]]:
    """One `runmllp` subprocess with default settings for a whole test module (issue 3).
    Each test still takes `transactional_db`, so it starts from an empty database."""
    with django_db_blocker.unblock():
        url = database_url_of_test_db()
    tmp = tmp_path_factory.mktemp("mllp")
    port = free_port()
    env = inherited_env()
    env.update(
        {
            "DATABASE_URL": url,
            "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL") or f"sqla+sqlite:///{tmp / 'broker.sqlite3'}",
            "RIS_CELERY_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
            "RIS_BIND": "127.0.0.1",
            "RIS_MLLP_PORT": str(port),
            "RIS_AE_TITLE": "RIS",
            "PYTHONUNBUFFERED": "1",
        }
    )
    with running(manage("runmllp"), env, tmp / "mllp.log", port):
        yield "127.0.0.1", port


# --- Web UI (issue 7) ---------------------------------------------------------------

UI_PASSWORD = "ui-pass-1234"


@pytest.fixture
def ui_users(db, settings) -> dict:
    """One user per role (ris/roles.py), each with UI_PASSWORD (hashed fast: these are tests)."""
    from django.contrib.auth.models import Group, User

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    users = {}
    for role in ("scheduler", "technologist", "radiologist", "admin"):
        user = User.objects.create_user(role, password=UI_PASSWORD)
        user.groups.add(Group.objects.get(name=role))
        users[role] = user
    return users


# --- Results out (issue 6) ------------------------------------------------------------


def _reset_publisher(app) -> None:
    from kombu import pools

    pools.reset()  # kombu keeps producer pools per connection in a global registry
    app._pool = None
    if "amqp" in app.__dict__:
        app.__dict__["amqp"]._producer_pool = None


@contextmanager
def publishing_to(env: dict[str, str]) -> Iterator:
    """Point this test process's Celery app (ris.celery.app) at the broker and queue of `env`
    for the duration of the block, so tasks queued in-process reach the worker subprocess."""
    from django.conf import settings

    from ris.celery import app

    keys = ("broker_url", "task_default_queue", "broker_transport_options")
    saved = {k: app.conf[k] for k in keys}
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS if env["CELERY_BROKER_URL"].startswith("sqla+sqlite") else {}
    app.conf.update(
        broker_url=env["CELERY_BROKER_URL"],
        task_default_queue=env["RIS_CELERY_QUEUE"],
        broker_transport_options=options,
    )
    _reset_publisher(app)
    try:
        yield app
    finally:
        app.conf.update(saved)
        _reset_publisher(app)


@pytest.fixture
def task_publisher(ris_env):
    """Tasks queued by this test process go to the broker and queue of `ris_env`."""
    with publishing_to(ris_env) as app:
        yield app


# --- Modality Worklist (issue 4) ---------------------------------------------------------

MWL_TEST_TIME_ZONE = "Asia/Ho_Chi_Minh"  # not UTC, so "the site's day" differs from UTC's


@pytest.fixture(scope="module")
def shared_dicom_scp(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[tuple[str, int]]:
    """One `rundicom` subprocess for a whole test module, its site in MWL_TEST_TIME_ZONE (tests
    using it set settings.RIS_TIME_ZONE to match). Each test takes `transactional_db`."""
    with django_db_blocker.unblock():
        url = database_url_of_test_db()
    tmp = tmp_path_factory.mktemp("dicom")
    port = free_port()
    env = inherited_env()
    env.update(
        {
            "DATABASE_URL": url,
            "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL") or f"sqla+sqlite:///{tmp / 'broker.sqlite3'}",
            "RIS_CELERY_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
            "RIS_BIND": "127.0.0.1",
            "RIS_DICOM_PORT": str(port),
            "RIS_AE_TITLE": "RIS",
            "RIS_TIME_ZONE": MWL_TEST_TIME_ZONE,
            "RIS_STORAGE_DIR": str(tmp / "storage"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    with running(manage("rundicom"), env, tmp / "dicom.log", port):
        yield "127.0.0.1", port
