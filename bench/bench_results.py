#!/usr/bin/env python3
"""Results out (issue 6): report sign-off → ORU^R01 ACKed by a HIS, through the outbox and a
Celery worker, against the floor of sending the same ORU straight to the same HIS.

The HIS is an independent plain-socket MLLP peer (a thread of the driver process) that answers
AA and stamps the time of each ACK. Measured:

1. latency: one sign-off at a time (ris.workflow.sign_report, commit, task queued), time from
   the call to the HIS's ACK of that report's ORU; p50/p95. Floor: the same ORU payloads sent
   directly on a fresh MLLP connection each (what the worker does, without queue or database).
2. outage: N sign-offs with the HIS down for the first half (every tenth exam also gets a
   correction right after its final), then the HIS comes back: time until every row is
   DELIVERED, how many times each message reached the HIS, and whether every correction
   arrived after its final.

Setups: PostgreSQL + RabbitMQ when both are reachable, and SQLite + the embedded broker.
Retry backoff for the run: base 0.5 s, maximum 5 s. Worker: `celery worker --concurrency 2`.
Run alone: `.venv/bin/python bench/bench_results.py [--quick]`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from common import (
    PY,
    RABBITMQ_URL,
    ROOT,
    create_postgres,
    drop_postgres,
    free_port,
    postgres_url,
    reachable,
    start,
    stop,
)

VT, FS_CR = b"\x0b", b"\x1c\x0d"


# --- The HIS peer -----------------------------------------------------------------------------


class HIS:
    """Plain-socket MLLP listener answering AA; records (control id, time) of every ACK."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acks: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        self.server: socket.socket | None = None

    def up(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown(socket.SHUT_RDWR)
            self.server.close()
            self.server = None

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while FS_CR in buffer:
                    frame, _, buffer = buffer.partition(FS_CR)
                    message = frame[frame.find(VT) + 1 :].decode("utf-8")
                    control_id = message.split("\r", 1)[0].split("|")[9]
                    ack = f"MSH|^~\\&|HIS|H|RIS|RAD|20260101||ACK^R01^ACK|{control_id}A|P|2.5.1\rMSA|AA|{control_id}\r"
                    conn.sendall(VT + ack.encode() + FS_CR)
                    with self.lock:
                        self.acks.append((control_id, time.perf_counter()))

    def ack_time(self, control_id: str) -> float | None:
        with self.lock:
            return next((t for c, t in self.acks if c == control_id), None)


# --- The driver (a subprocess bound to the benchmark database) ---------------------------------


def drive(samples: int, outage: int) -> dict:
    import django

    django.setup()
    from django.conf import settings

    from hl7.client import MLLPClient
    from ris import workflow
    from ris.models import OutboundMessage, OutboxStatus
    from tests.test_reports_helpers import radiologist, ready_exam

    his = HIS(int(settings.RIS_HIS_MLLP.rpartition(":")[2]))  # the worker sends there too
    his.up()
    rad = radiologist("benchrad")

    # 1. latency, one sign-off at a time
    exams = [ready_exam(images=1) for _ in range(samples)]
    latencies, sign_times = [], []
    for exam in exams:
        started = time.perf_counter()
        report = workflow.sign_report(rad, exam, findings="No acute abnormality.", impression="Normal.", final=True)
        sign_times.append(time.perf_counter() - started)
        control_id = f"R{report.pk}-oru"
        deadline = time.monotonic() + 30
        while (acked := his.ack_time(control_id)) is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if acked is None:
            raise RuntimeError(f"{control_id} not ACKed within 30 s")
        latencies.append(acked - started)
    # floor: the same payloads, straight to the HIS on a fresh connection each
    floor = []
    for row in OutboundMessage.objects.filter(destination="oru").order_by("id")[:samples]:
        started = time.perf_counter()
        with MLLPClient("127.0.0.1", his.port, timeout=30) as client:
            client.send(row.payload.encode("utf-8"))
        floor.append(time.perf_counter() - started)

    # 2. outage: HIS down for the first half
    outage_exams = [ready_exam(images=1) for _ in range(outage)]
    before = OutboundMessage.objects.count()
    with his.lock:
        his.acks.clear()
    his.down()
    pairs = []

    def sign_all(batch) -> None:
        for n, exam in batch:
            final = workflow.sign_report(rad, exam, findings="First reading.", impression="Normal.", final=True)
            if n % 10 == 0:
                corr = workflow.sign_report(rad, exam, findings="Corrected.", impression="Normal.", final=True)
                pairs.append((f"R{final.pk}-oru", f"R{corr.pk}-oru"))

    numbered = list(enumerate(outage_exams))
    sign_all(numbered[: outage // 2])
    his.up()
    back_at = time.perf_counter()
    sign_all(numbered[outage // 2 :])
    expected = OutboundMessage.objects.count() - before
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if not OutboundMessage.objects.exclude(status=OutboxStatus.DELIVERED).exists():
            break
        time.sleep(0.2)
    drained = time.perf_counter() - back_at
    with his.lock:
        received = [c for c, _ in his.acks]
    counts = {c: received.count(c) for c in set(received)}
    in_order = all(received.index(f) < received.index(c) for f, c in pairs if f in counts and c in counts)
    his.down()
    return {
        "latency": latencies,
        "sign": sign_times,
        "floor": floor,
        "outage_messages": expected,
        "outage_delivered": OutboundMessage.objects.filter(status=OutboxStatus.DELIVERED).count() - samples,
        "outage_distinct_received": len(counts),
        "outage_duplicates": sum(n - 1 for n in counts.values()),
        "outage_pairs": len(pairs),
        "outage_in_order": in_order,
        "outage_drain_seconds": drained,
    }


# --- Orchestration ----------------------------------------------------------------------------


WORKER = [PY, "-m", "celery", "-A", "ris", "worker", "--beat", "--concurrency", "2", "--loglevel", "WARNING"]
WORKER += ["--without-gossip", "--without-mingle"]


def setup_run(database_url: str, broker_url: str, samples: int, outage: int, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIS_")}
    env.update(
        {
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker_url,
            "RIS_CELERY_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
            "RIS_LOG_LEVEL": "WARNING",
            "RIS_HIS_MLLP": f"127.0.0.1:{free_port()}",
            "RIS_REPORT_OUTPUT": "oru",
            "RIS_OUTBOX_RETRY_BASE_SECONDS": "0.5",
            "RIS_OUTBOX_RETRY_MAX_SECONDS": "5",
            "RIS_OUTBOX_MAX_ATTEMPTS": "1000",
            "RIS_OUTBOX_ACK_TIMEOUT": "5",
            "RIS_OUTBOX_SWEEP_SECONDS": "5",
            "DJANGO_SETTINGS_MODULE": "ris.settings",
            "PYTHONPATH": str(ROOT),
        }
    )
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    worker_argv = [*WORKER, "--schedule", str(tmp / "beat"), "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"]
    worker = start(worker_argv, env, tmp / "worker.log")
    try:
        time.sleep(3)
        out = subprocess.run(
            [PY, __file__, "--drive", str(samples), str(outage)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode:
            raise RuntimeError(f"driver failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        stop(worker, signal.SIGTERM)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def section(label: str, r: dict) -> str:
    lat, floor = r["latency"], r["floor"]
    p50, p95 = statistics.median(lat) * 1000, percentile(lat, 95) * 1000
    f50, f95 = statistics.median(floor) * 1000, percentile(floor, 95) * 1000
    sign = f"{statistics.median(r['sign']) * 1000:.1f}" if r.get("sign") else "-"
    return (
        f"| {label} | {len(lat)} | {sign} | {p50:.1f} | {p95:.1f} | {f50:.2f} | {f95:.2f} | {p95 / f95:.0f}x | "
        f"{r['outage_messages']} ({r['outage_pairs']} corrections) | {r['outage_delivered']} | "
        f"{r['outage_duplicates']} | {'yes' if r['outage_in_order'] else 'NO'} | {r['outage_drain_seconds']:.1f} |"
    )


def run(quick: bool = False) -> str:
    samples, outage = (30, 100) if quick else (200, 1000)
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        pg = create_postgres("bench_results") if reachable(5672) else None
        if pg:
            try:
                url = postgres_url(pg)
                rows.append(section("PostgreSQL + RabbitMQ", setup_run(url, RABBITMQ_URL, samples, outage, tmp)))
            finally:
                drop_postgres(pg)
        sqlite_url = f"sqlite:///{tmp / 'bench.sqlite3'}"
        broker = f"sqla+sqlite:///{tmp / 'broker.sqlite3'}"
        rows.append(section("SQLite + embedded broker", setup_run(sqlite_url, broker, samples, outage, tmp)))
    return (
        "## Results out: sign-off → ORU^R01 ACKed (issue 6)\n\n"
        "Latency from `sign_report` to the HIS's ACK, one sign-off at a time, through the outbox and a Celery "
        "worker; floor = the same ORU sent straight to the same plain-socket HIS. Outage: the HIS is down while "
        "the first half of the sign-offs happen (every tenth exam also gets a correction), then returns; "
        "retry backoff 0.5 s doubling to 5 s. The sign_report call includes rendering the ORU with hl7apy "
        "in the transaction, most of its time.\n\n"
        "| setup | sign-offs | sign_report call p50 ms | p50 ms | p95 ms | floor p50 ms | floor p95 ms | "
        "p95 ours/floor | outage messages | "
        "delivered | duplicates at HIS | corrections after finals | drained in s after HIS returned |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--drive":
        print(json.dumps(drive(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        print(run(quick="--quick" in sys.argv))
