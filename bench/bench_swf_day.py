#!/usr/bin/env python3
"""End-to-end Scheduled Workflow day (issue 8, IHE RAD SWF): the whole stack (`manage.py runris`:
web, MLLP listener, DICOM SCP, Celery worker and beat) driven only by independent peers.

1. N orders: ORM^O01 NW over one plain-socket MLLP connection (RAD-2), station ORC-18 spread
   over K modalities; ACK latency per message.
2. Worklist: each modality queries its own steps with DCMTK `findscu -W` (RAD-5), all K at once.
3. Acquisition: each modality, in parallel, per exam: MPPS N-CREATE IN PROGRESS (pynetdicom,
   RAD-6), its images with DCMTK `storescu` (RAD-8), N-SET COMPLETED listing them (RAD-7);
   then completion to READY_FOR_READING from the audit trail, minus the quiet period.
4. Reading: a radiologist signs each report final through the JSON API; the ORU^R01 (RAD-? /
   HL7 results) reaches a local plain-socket HIS peer, which stamps its arrival.

Per-stage p50/p95/p99, and the whole stack's memory: the summed VmRSS of runris and every
descendant, sampled from /proc every 0.25 s (peak reported). Compared against the issue's
targets (ratio ours/target; < 1 is better). On PostgreSQL + RabbitMQ when both answer on
127.0.0.1, else (and also in full mode) on SQLite + the embedded broker.

Run alone: `.venv/bin/python bench/bench_swf_day.py [--quick]`. To measure one stack at a chosen
size without touching the committed plot: `--stack pg|sqlite --orders N --modalities K --images M
--no-plot` (e.g. the full day on PostgreSQL + RabbitMQ: `--stack pg --orders 200 --modalities 4
--images 5 --no-plot`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import (
    PG_ADMIN_URL,
    PY,
    RABBITMQ_URL,
    ROOT,
    create_postgres,
    descendants,
    drop_postgres,
    free_port,
    mpps_datasets,
    postgres_and_rabbitmq,
    start,
    stop,
    wait_port,
)

VT, FS_CR = b"\x0b", b"\x1c\x0d"
QUIET_SECONDS = 1
TARGETS = {"ready_p95": 2.0, "oru_p95": 1.0, "rss_mb": 600.0, "orm_p99": 0.050}
PLOT = ROOT / "docs" / "benchmarks" / "swf_day.png"


# --- small helpers ----------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


# --- the whole stack's memory, from /proc -------------------------------------------------------


def tree_rss_mb(root: int) -> float:
    return sum(rss for _, rss, _ in tree_memory(root))


def tree_memory(root: int) -> list[tuple[str, float, float]]:
    """(command, RSS MB, PSS MB) of runris and its descendants. PSS splits the pages that forked
    children (gunicorn and Celery pool processes) share with their parent, so its sum is what
    the stack really occupies; the RSS sum counts those shared pages once per process."""
    rows = []
    for pid in descendants(root):
        try:
            rss = pss = 0
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = " ".join(a.decode(errors="replace").rsplit("/", 1)[-1] for a in argv[1:4] if a)
        rows.append((name, rss / 1024, pss / 1024))
    return rows


class RssSampler(threading.Thread):
    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peak, self.samples, self.done = root, 0.0, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            rss = tree_rss_mb(self.root)
            self.samples.append(rss)
            self.peak = max(self.peak, rss)
            self.done.wait(0.25)


# --- the HIS peer: a plain-socket MLLP receiver that stamps each ORU -----------------------------


class HisPeer(threading.Thread):
    def __init__(self, accession_pattern: str) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.pattern = re.compile(accession_pattern.encode())
        self.arrivals: dict[str, float] = {}

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        with conn:
            while data := conn.recv(65536):
                buffer += data
                while FS_CR in buffer:
                    frame, _, buffer = buffer.partition(FS_CR)
                    self.answer(conn, frame.lstrip(VT))

    def answer(self, conn: socket.socket, frame: bytes) -> None:
        now = time.time()
        msh = frame.split(b"\r", 1)[0].split(b"|")
        control_id = msh[9] if len(msh) > 9 else b""
        if b"ORU^R01" in frame:
            for accession in {m.decode() for m in self.pattern.findall(frame)}:
                self.arrivals.setdefault(accession, now)
        ack = b"MSH|^~\\&|HIS|HOSP|RIS|RAD|20260101||ACK|A" + control_id + b"|P|2.5.1\rMSA|AA|" + control_id + b"\r"
        conn.sendall(VT + ack + FS_CR)

    def close(self) -> None:
        self.server.close()


# --- the peers of the modality side -------------------------------------------------------------


def orm(run: str, i: int, accession: str, station: str, start: str) -> bytes:
    obr = ["OBR", "1", f"PL{run}{i}^HIS", "", "^^^P1^CT head^LOCAL"] + [""] * 13 + [accession]
    obr += ["", "", "", "", "", "CT"]
    lines = [
        f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261126101500||ORM^O01|{run}{i}|P|2.3.1||||||8859/1",
        f"PID|||P{run}{i}^^^HOSP||Day^Patient{i}||19700101|F",
        "PV1||O|||||^Referrer^Anna",
        f"ORC|NW|PL{run}{i}^HIS|||SC||^^^{start}^^R|||||||||||{station}",
        "|".join(obr),
    ]
    return ("\r".join(lines) + "\r").encode("latin-1")


def send_orders(port: int, messages: list[bytes]) -> tuple[list[float], list[str]]:
    """Send each order and wait for its ACK; an AR ("try again") is sent again once, as a HIS
    would, and reported. Returns the ACK latencies and the refusals seen."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies, refusals, buffer = [], [], b""
    for message in messages:
        for attempt in range(2):
            started = time.perf_counter()
            sock.sendall(VT + message + FS_CR)
            while FS_CR not in buffer:
                buffer += sock.recv(65536)
            ack, _, buffer = buffer.partition(FS_CR)
            latencies.append(time.perf_counter() - started)
            if b"MSA|AA|" in ack:
                break
            refusals.append(ack.decode("latin-1").split("\r")[1][:120])
            if b"MSA|AR|" not in ack or attempt == 1:
                raise RuntimeError(f"order refused: {ack[:300]!r}")
    sock.close()
    return latencies, refusals


def findscu(port: int, station: str) -> tuple[float, int]:
    argv = ["findscu", "-v", "-W", "-aet", station, "-aec", "RIS", "127.0.0.1", str(port)]
    keys = ["PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", "RequestedProcedureID"]
    keys += [f"ScheduledProcedureStepSequence[0].{k}" for k in ("Modality", "ScheduledProcedureStepID")]
    keys += ["ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate"]
    keys += [f"ScheduledProcedureStepSequence[0].ScheduledStationAETitle={station}"]
    for key in keys:
        argv += ["-k", key]
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "TCP_NODELAY": "1"})
    elapsed = time.perf_counter() - started
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"findscu failed: {output[-500:]}")
    return elapsed, len(re.findall(r"Find Response: \d+ \(Pending", output))


def write_images(folder: Path, exam: dict, count: int) -> tuple[str, list[str]]:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid, uids = generate_uid(), []
    for i in range(count):
        sop = generate_uid()
        uids.append(sop)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = exam["study_uid"], series_uid
        ds.AccessionNumber, ds.PatientID, ds.PatientName = exam["accession"], exam["patient_id"], "DAY^PATIENT"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.StudyDate = "CT", 1, i + 1, "20260101"
        ds.Rows = ds.Columns = 64
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = bytes(64 * 64 * 2)
        ds.save_as(folder / f"{sop}.dcm", enforce_file_format=True)
    return series_uid, uids


def mpps(port: int, station: str, what: str, ds, uid: str) -> float:
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityPerformedProcedureStep

    started = time.perf_counter()
    ae = AE(ae_title=station)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="RIS")
    if not assoc.is_established:
        raise RuntimeError("MPPS association refused")
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        send = assoc.send_n_create if what == "create" else assoc.send_n_set
        status, _ = send(ds, ModalityPerformedProcedureStep, uid)
    finally:
        assoc.release()
    if status is None or status.Status != 0:
        raise RuntimeError(f"MPPS {what} refused: {status}")
    return time.perf_counter() - started


def storescu(port: int, station: str, folder: Path) -> float:
    started = time.perf_counter()
    argv = ["storescu", "-aet", station, "-aec", "RIS", "127.0.0.1", str(port), "+sd", str(folder)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "TCP_NODELAY": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")
    return time.perf_counter() - started


def sign(http_port: int, token: str, accession: str) -> tuple[float, float]:
    body = json.dumps({"findings": "No acute findings.", "impression": "Normal.", "status": "final"}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/api/exams/{accession}/report",
        data=body,
        method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    started_epoch, started = time.time(), time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        if response.status != 201:
            raise RuntimeError(f"sign {accession}: HTTP {response.status}")
    return started_epoch, time.perf_counter() - started


# --- child mode: read the bench database (DATABASE_URL of the environment) ----------------------


def child_exams(accessions: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ris.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from ris.models import RequestedProcedure

    rows = RequestedProcedure.objects.filter(accession_number__in=accessions).select_related("order__patient")
    out = [
        {
            "accession": r.accession_number,
            "study_uid": r.study_instance_uid,
            "sps_id": r.scheduled_steps.first().sps_id,
            "patient_id": r.order.patient.patient_id,
        }
        for r in rows
    ]
    print(json.dumps(out))


def child_ready(accessions: list[str], timeout: float) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ris.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from ris.models import AuditEvent

    deadline = time.time() + timeout
    while True:
        events = AuditEvent.objects.filter(
            action="exam.ready_for_reading", requested_procedure__accession_number__in=accessions
        ).values_list("requested_procedure__accession_number", "at")
        found = {a: at.timestamp() for a, at in events}
        if len(found) >= len(accessions) or time.time() > deadline:
            break
        time.sleep(0.2)
    print(json.dumps(found))


def child(env: dict[str, str], *args: str) -> object:
    result = subprocess.run([PY, __file__, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- the day ------------------------------------------------------------------------------------


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)}: {result.stderr[-1500:]}")
    return result.stdout


def day(work: Path, database_url: str, broker_url: str, orders: int, modalities: int, images: int) -> dict:
    run = uuid.uuid4().hex[:5].upper()
    his = HisPeer(rf"D{run}\d{{5}}")
    his.start()
    ports = {name: free_port() for name in ("http", "mllp", "dicom")}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RIS_")},
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "RIS_CELERY_QUEUE": f"bench-{run.lower()}",
        "RIS_HTTP_PORT": str(ports["http"]),
        "RIS_MLLP_PORT": str(ports["mllp"]),
        "RIS_DICOM_PORT": str(ports["dicom"]),
        "RIS_HIS_MLLP": f"127.0.0.1:{his.port}",
        "RIS_REPORT_OUTPUT": "oru",
        "RIS_STORAGE_DIR": str(work / "dicom"),
        "RIS_ARRIVAL_QUIET_SECONDS": str(QUIET_SECONDS),
        # BENCH_RIS_LOG_LEVEL=INFO logs every task's receipt and run time (diagnosis; costs a little).
        "RIS_LOG_LEVEL": os.environ.get("BENCH_RIS_LOG_LEVEL", "WARNING"),
        "DJANGO_SETTINGS_MODULE": "ris.settings",
        "TCP_NODELAY": "1",
        "PYTHONUNBUFFERED": "1",
    }
    # BENCH_WORKER_POOL / BENCH_WORKER_CONCURRENCY size the stack's Celery worker (RIS_WORKER_*).
    for knob in ("POOL", "CONCURRENCY"):
        if os.environ.get(f"BENCH_WORKER_{knob}"):
            env[f"RIS_WORKER_{knob}"] = os.environ[f"BENCH_WORKER_{knob}"]
    manage(env, "migrate", "--noinput", "-v0")
    stations = [f"DAYCT{m}" for m in range(modalities)]
    for station in stations:
        manage(env, "modality", "add", station, "--modality", "CT")
    manage(env, "user", "add", f"rad{run.lower()}", "--role", "radiologist", "--password", uuid.uuid4().hex)
    token = manage(env, "apitoken", f"rad{run.lower()}").strip().split()[-1]
    stack = start([PY, "manage.py", "runris"], env, work / "runris.log")
    sampler = RssSampler(stack.pid)
    try:
        for port in ports.values():
            wait_port(port, stack, timeout=90)
        time.sleep(3)  # worker and beat come up after the listeners
        sampler.start()
        idle_rss = tree_rss_mb(stack.pid)
        try:
            result = drive(work, env, ports, token, his, run, stations, orders, images)
        except Exception as exc:
            tail = (work / "runris.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{exc}\n--- runris.log ---\n{tail}") from exc
        result["rss_idle_mb"], result["rss_peak_mb"] = idle_rss, sampler.peak
        result["memory"] = tree_memory(stack.pid)
        result["processes"] = len(descendants(stack.pid))
        return result
    finally:
        sampler.done.set()
        stop(stack)
        his.close()
        if os.environ.get("BENCH_KEEP_LOG"):  # a file name: the stack's output is copied there
            Path(os.environ["BENCH_KEEP_LOG"]).write_bytes((work / "runris.log").read_bytes())


def drive(work, env, ports, token, his, run, stations, orders, images) -> dict:
    start = (dt.datetime.now() + dt.timedelta(hours=1)).strftime("%Y%m%d%H%M%S")
    accessions = [f"D{run}{i:05d}" for i in range(orders)]
    station_of = {a: stations[i % len(stations)] for i, a in enumerate(accessions)}
    messages = [orm(run, i, a, station_of[a], start) for i, a in enumerate(accessions)]
    stages: dict[str, list[float]] = {}
    stages["ORM ACK (MLLP)"], refusals = send_orders(ports["mllp"], messages)

    exams = {e["accession"]: e for e in child(env, "--exams", *accessions)}
    with ThreadPoolExecutor(len(stations)) as pool:
        queries = list(pool.map(lambda s: findscu(ports["dicom"], s), stations))
    stages["MWL C-FIND (findscu, per modality)"] = [q[0] for q in queries]
    matches = sum(q[1] for q in queries)

    per_exam: dict[str, dict[str, float]] = {}

    def acquire(station: str) -> None:
        from pydicom.uid import generate_uid

        for accession in [a for a in accessions if station_of[a] == station]:
            exam = exams[accession]
            folder = work / "images" / accession
            series_uid, sops = write_images(folder, exam, images)
            ids = exam["study_uid"], exam["accession"], exam["sps_id"]
            who = {"station": station, "patient_id": exam["patient_id"], "label": "DAY"}
            create, done = mpps_datasets(*ids, sops, series_uid, **who)
            uid = generate_uid()
            times = {"create": mpps(ports["dicom"], station, "create", create, uid)}
            times["store"] = storescu(ports["dicom"], station, folder)
            times["set"] = mpps(ports["dicom"], station, "set", done, uid)
            times["completed_at"] = time.time()
            per_exam[accession] = times

    with ThreadPoolExecutor(len(stations)) as pool:
        list(pool.map(acquire, stations))
    ready = child(env, "--ready", "120", *accessions)
    stages["MPPS N-CREATE"] = [t["create"] for t in per_exam.values()]
    stages[f"C-STORE, {images} images (storescu)"] = [t["store"] for t in per_exam.values()]
    stages["MPPS N-SET COMPLETED"] = [t["set"] for t in per_exam.values()]
    stages["complete → READY, beyond quiet period"] = [
        max(0.0, ready[a] - per_exam[a]["completed_at"] - QUIET_SECONDS) for a in accessions if a in ready
    ]

    signed: dict[str, float] = {}
    sign_calls = []
    for accession in accessions:
        started_epoch, elapsed = sign(ports["http"], token, accession)
        signed[accession] = started_epoch
        sign_calls.append(elapsed)
    deadline = time.time() + 60
    while len(his.arrivals) < len(accessions) and time.time() < deadline:
        time.sleep(0.1)
    stages["sign-off API call"] = sign_calls
    stages["sign-off → ORU at HIS"] = [his.arrivals[a] - signed[a] for a in accessions if a in his.arrivals]
    return {
        "orders": orders,
        "modalities": len(stations),
        "images": images,
        "worklist_matches": matches,
        "ready": len(ready),
        "oru": len(his.arrivals),
        "refusals": refusals,
        "stages": stages,
    }


# --- report -------------------------------------------------------------------------------------


def plot(results: list[tuple[str, dict]]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.2), squeeze=False)
    for ax, (label, r) in zip(axes[0], results, strict=True):
        names = list(r["stages"])
        p50 = [percentile(r["stages"][n], 50) * 1000 for n in names]
        p95 = [percentile(r["stages"][n], 95) * 1000 for n in names]
        y = range(len(names))
        ax.barh([i + 0.2 for i in y], p50, height=0.4, label="p50")
        ax.barh([i - 0.2 for i in y], p95, height=0.4, label="p95")
        ax.set_yticks(list(y), names, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log)")
        ax.set_title(f"SWF day, {label}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return True


def ratio(value: float, target: float) -> str:
    return f"{value / target:.2f}"


def worker_sizing() -> str:
    pool, concurrency = os.environ.get("BENCH_WORKER_POOL"), os.environ.get("BENCH_WORKER_CONCURRENCY")
    if not (pool or concurrency):
        return "process counts and worker pool at their defaults"
    return f"worker pool {pool or 'default'}, concurrency {concurrency or 'default'}"


def section(results: list[tuple[str, dict]], plotted: bool, quick: bool) -> str:
    first = results[0][1]
    lines = [
        "## End-to-end Scheduled Workflow day",
        "",
        f"{first['orders']} orders over MLLP → worklist queries by {first['modalities']} modalities (DCMTK findscu, "
        f"all at once) → per exam MPPS N-CREATE, {first['images']} images by DCMTK storescu, MPPS N-SET "
        "COMPLETED (modalities in parallel) → reports signed final through the JSON API → ORU^R01 at a "
        "plain-socket HIS peer. The stack is `manage.py runris` (web, MLLP, DICOM SCP, Celery worker, beat; "
        f"{worker_sizing()}); quiet period {QUIET_SECONDS} s. Memory: summed VmRSS of runris and all its "
        "descendants from /proc, sampled every 0.25 s." + (" Quick mode." if quick else ""),
        "",
    ]
    for label, r in results:
        lines += [
            f"### {label}",
            "",
            f"Worklist answers: {r['worklist_matches']} of {r['orders']} steps; READY_FOR_READING: "
            f"{r['ready']} of {r['orders']}; ORU at the HIS: {r['oru']} of {r['orders']}. Orders answered AR "
            f"and accepted when sent again: {len(r['refusals'])}"
            + (f" (`{r['refusals'][0]}`)" if r["refusals"] else "")
            + ".",
            "",
            "| stage | n | p50 (ms) | p95 (ms) | p99 (ms) |",
            "|---|---|---|---|---|",
        ]
        for name, values in r["stages"].items():
            p50, p95, p99 = (percentile(values, p) * 1000 for p in (50, 95, 99))
            lines.append(f"| {name} | {len(values)} | {p50:.1f} | {p95:.1f} | {p99:.1f} |")
        ready95 = percentile(r["stages"]["complete → READY, beyond quiet period"], 95)
        oru95 = percentile(r["stages"]["sign-off → ORU at HIS"], 95)
        orm99 = percentile(r["stages"]["ORM ACK (MLLP)"], 99)
        lines += [
            "",
            "| figure | ours | target | ratio ours/target |",
            "|---|---|---|---|",
            f"| MPPS complete → ready p95, beyond quiet period | {ready95:.2f} s | ≤ 2 s | "
            f"**{ratio(ready95, TARGETS['ready_p95'])}** |",
            f"| sign-off → ORU p95 | {oru95:.3f} s | ≤ 1 s | **{ratio(oru95, TARGETS['oru_p95'])}** |",
            f"| ORM ACK p99 | {orm99 * 1000:.1f} ms | ≤ 50 ms | **{ratio(orm99, TARGETS['orm_p99'])}** |",
            f"| whole stack RSS, peak ({r['processes']} processes) | {r['rss_peak_mb']:.0f} MB | ≤ 600 MB | "
            f"**{ratio(r['rss_peak_mb'], TARGETS['rss_mb'])}** |",
            f"| whole stack PSS at the end (shared pages split) | {sum(m[2] for m in r['memory']):.0f} MB "
            f"| ≤ 600 MB | **{ratio(sum(m[2] for m in r['memory']), TARGETS['rss_mb'])}** |",
            f"| whole stack RSS, idle after start | {r['rss_idle_mb']:.0f} MB | | |",
            "",
            "Per process at the end of the day (RSS / PSS, MB): "
            + "; ".join(f"`{name}` {rss:.0f}/{pss:.0f}" for name, rss, pss in r["memory"]),
            "",
        ]
    if plotted:
        lines += [f"![SWF day stage latencies](benchmarks/{PLOT.name})", ""]
    return "\n".join(lines)


def postgres_database() -> str | None:
    """A scratch database when PostgreSQL and RabbitMQ both answer on loopback."""
    return create_postgres("bench_day") if postgres_and_rabbitmq() else None


def run(
    quick: bool,
    size: tuple[int, int, int] | None = None,
    stack: str = "",
    plotting: bool = True,
) -> str:
    """The day on PostgreSQL + RabbitMQ (when they answer) and/or SQLite + the embedded broker.
    `size` = (orders, modalities, images per exam) overrides the mode's; `stack` "pg" or
    "sqlite" runs that one only."""
    import shutil

    if not all(shutil.which(tool) for tool in ("findscu", "storescu")):
        return "## End-to-end Scheduled Workflow day\n\nSkipped: DCMTK (findscu, storescu) is not installed.\n"
    orders, modalities, images = size or ((24, 3, 3) if quick else (200, 4, 5))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-day-") as tmp:
        work = Path(tmp)
        name = postgres_database() if stack in ("", "pg") else None
        if name:
            (work / "pg").mkdir()
            url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
            try:
                results.append(
                    ("PostgreSQL + RabbitMQ", day(work / "pg", url, RABBITMQ_URL, orders, modalities, images))
                )
            finally:
                drop_postgres(name)
            print(f"   PostgreSQL + RabbitMQ done: {results[-1][1]['ready']} ready", flush=True)
        if stack == "sqlite" or (stack == "" and (not name or not quick)):
            (work / "sqlite").mkdir()
            database = f"sqlite:///{work / 'sqlite' / 'db.sqlite3'}"
            broker = f"sqla+sqlite:///{work / 'sqlite' / 'broker.sqlite3'}"
            results.append(
                ("SQLite + embedded broker", day(work / "sqlite", database, broker, orders, modalities, images))
            )
    if not results:
        return "## End-to-end Scheduled Workflow day\n\nSkipped: PostgreSQL or RabbitMQ not reachable.\n"
    return section(results, plotting and plot(results), quick)


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="End-to-end Scheduled Workflow day against manage.py runris.")
    parser.add_argument("--quick", action="store_true", help="24 orders, 3 modalities, 3 images each")
    parser.add_argument("--stack", choices=("pg", "sqlite"), default="", help="run on this stack only")
    parser.add_argument("--orders", type=int)
    parser.add_argument("--modalities", type=int)
    parser.add_argument("--images", type=int)
    parser.add_argument("--no-plot", action="store_true", help=f"do not rewrite {PLOT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    default = (24, 3, 3) if args.quick else (200, 4, 5)
    size = (args.orders or default[0], args.modalities or default[1], args.images or default[2])
    print(run(args.quick, size, args.stack, not args.no_plot))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--exams":
        child_exams(sys.argv[2:])
    elif len(sys.argv) >= 2 and sys.argv[1] == "--ready":
        child_ready(sys.argv[3:], float(sys.argv[2]))
    else:
        main(sys.argv[1:])
