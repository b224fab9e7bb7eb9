#!/usr/bin/env python3
"""C-STORE ingest with arrival tracking, side by side with DCMTK storescp (peers.md §6), and the
scan-to-ready latency (MPPS COMPLETED + last instance -> READY_FOR_READING).

Ingest: N small CT instances (64x64, 16-bit, explicit VR little endian, ≈12 KB, one study in
10 series, as peers.md genct.py) sent by one DCMTK `storescu +sd` association to
- our SCP (`manage.py rundicom` with a Celery worker: every instance written atomically under
  RIS_STORAGE_DIR, recorded, matched to its exam, completeness checks queued), and
- DCMTK `storescp -od DIR` (writes the files, nothing else),
TCP_NODELAY=1 on every process. Each run stores fresh instances (a new study per run).

Latency: K exams each go MPPS IN PROGRESS -> N-SET COMPLETED listing 5 instances -> storescu of
those 5; measured from storescu's exit (last instance acknowledged) until the exam reads
READY_FOR_READING, minus the quiet period (RIS_ARRIVAL_QUIET_SECONDS=1 here). On the embedded
default (SQLite + SQLAlchemy broker) and, when they answer on 127.0.0.1, PostgreSQL + RabbitMQ.

`run(quick)` returns the Markdown section. Usage alone: `.venv/bin/python bench/bench_store.py [--quick]`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
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
    mpps_datasets,
    postgres_url,
    reachable,
    start,
    stop,
    wait_port,
)

QUIET_SECONDS = 1.0
# Before the ingest rounds: how long after a sync the inodes freed by earlier steps stop being
# "recently deleted" for ext4 without a journal (60 s for a clean inode table block, fs/ext4/ialloc.c).
SETTLE_SECONDS = 61


# --- Data -----------------------------------------------------------------------------------


def write_ct_study(folder: Path, n: int, study_uid: str, accession: str, series_count: int = 10) -> list[str]:
    """N valid CT Image Storage files of one study (peers.md genct.py). Returns the SOP UIDs."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rows = cols = 64
    pixels = bytes((x * 7 + y) % 256 for y in range(rows) for x in range(cols * 2))
    series = [generate_uid() for _ in range(series_count)]
    frame = generate_uid()
    uids = []
    for i in range(1, n + 1):
        sop = generate_uid()
        uids.append(sop)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber, ds.Modality, ds.Manufacturer = accession, "CT", "BENCH"
        ds.ReferringPhysicianName = "REF^DOCTOR"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "BENCH^PATIENT", "BENCH1", "19700101", "M"
        ds.StudyInstanceUID = study_uid
        s = (i - 1) % series_count
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series[s], s + 1, (i - 1) // series_count + 1
        ds.StudyID, ds.PatientPosition, ds.KVP = "1", "HFS", "120"
        ds.ImagePositionPatient = [0, 0, float(ds.InstanceNumber)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.SliceThickness, ds.PixelSpacing = "1", [1, 1]
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.PixelData = pixels
        ds.save_as(folder / f"ct{i:05d}.dcm", enforce_file_format=True)
    return uids


# --- Child mode: Django work against the bench database (DATABASE_URL of the environment) ----


def _django():
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ris.settings")
    sys.path.insert(0, str(ROOT))
    django.setup()


def child_order(count: int) -> None:
    """Place `count` scheduled exams on station BENCH; print [[study UID, accession, SPS ID], ...]."""
    _django()
    import datetime as dt

    from django.utils import timezone

    from ris import workflow

    his = workflow.Actor.for_hl7("HIS")
    patient = workflow.register_patient(his, "BENCH1", "", workflow.Demographics(family_name="BENCH"))
    start = timezone.now() + dt.timedelta(hours=1)
    out = []
    for _ in range(count):
        request = workflow.OrderRequest(
            procedures=[
                workflow.ProcedureRequest(
                    modality="CT", steps=[workflow.StepRequest(modality="CT", start=start, station_ae_title="BENCH")]
                )
            ]
        )
        exam = workflow.place_order(his, patient, request).requested_procedures.get()
        out.append([exam.study_instance_uid, exam.accession_number, exam.scheduled_steps.get().sps_id])
    print(json.dumps(out))


def child_ready_times(study_uids: list[str], timeout: float) -> None:
    """Wait until every exam is READY_FOR_READING; print {Study UID: epoch time of that transition}
    from the audit trail (stamped by the worker inside the transaction that made it)."""
    _django()
    from ris.models import AuditEvent

    deadline = time.time() + timeout
    while True:
        events = AuditEvent.objects.filter(
            action="exam.ready_for_reading", requested_procedure__study_instance_uid__in=study_uids
        ).values_list("requested_procedure__study_instance_uid", "at")
        found = {uid: at.timestamp() for uid, at in events}
        if len(found) == len(study_uids) or time.time() > deadline:
            break
        time.sleep(0.2)
    print(json.dumps(found))


# --- Processes --------------------------------------------------------------------------------


def child(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([PY, __file__, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def storescu(port: int, called: str, folder: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        ["storescu", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port), "+sd", str(folder)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or "Failed" in result.stderr:
        raise RuntimeError(f"storescu to {called} failed: {result.stderr[-500:]}")
    return elapsed


class Stack:
    """Our DICOM SCP and one Celery worker on a fresh database and broker."""

    def __init__(self, work: Path, database_url: str, broker_url: str) -> None:
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RIS_")},
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker_url,
            "RIS_CELERY_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
            "RIS_DICOM_PORT": str(self.port),
            "RIS_DICOM_ALLOW_ANY_AE": "1",
            "RIS_STORAGE_DIR": str(work / "ris-storage"),
            "RIS_ARRIVAL_QUIET_SECONDS": str(int(QUIET_SECONDS)),
            "RIS_LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "ris.settings",
            "TCP_NODELAY": "1",
        }
        self.work = work
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> Stack:
        subprocess.run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env, check=True)
        scp = start([PY, "manage.py", "rundicom"], self.env, self.work / "rundicom.log")
        worker_argv = [PY, "-m", "celery", "-A", "ris", "worker", "--concurrency", "2", "--loglevel", "WARNING"]
        worker = start([*worker_argv, "--hostname", f"bench-{uuid.uuid4().hex[:6]}@%h"], self.env, self.work / "w.log")
        self.processes = [scp, worker]
        wait_port(self.port, scp)
        return self

    def __exit__(self, *_exc) -> None:
        for process in self.processes:
            stop(process)


# --- Measurements ---------------------------------------------------------------------------


def orthanc_available() -> bool:
    return shutil.which("Orthanc") is not None


def store_into_fresh_orthanc(work: Path, run: int, folder: Path) -> float:
    """One storescu run into a new Orthanc (empty storage and SQLite index, peers.md §6), so every
    run stores fresh instances as the RIS does; Orthanc's own start-up is not timed."""
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(work / f"orthanc{run}"),
        "IndexDirectory": str(work / f"orthanc{run}"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {},
        "Plugins": [],
    }
    path = work / f"orthanc{run}.json"
    path.write_text(json.dumps(config))
    (work / "orthanc-logs").mkdir(exist_ok=True)
    argv = ["Orthanc", f"--logdir={work / 'orthanc-logs'}", str(path)]
    orthanc = start(argv, {**os.environ, "TCP_NODELAY": "1"}, work / f"orthanc{run}.log")
    try:
        wait_port(dicom_port, orthanc)
        return storescu(dicom_port, "ORTHANC", folder)
    finally:
        stop(orthanc)


def measure_ingest(work: Path, n: int, runs: int, settle: float = SETTLE_SECONDS) -> dict:
    """`runs` rounds, each storing a fresh set into the RIS, storescp and a fresh Orthanc one
    after the other (the order turning each round), so the disk's and the machine's moods of the
    moment fall on all three alike; medians of seconds, and the median of each round's ratio.
    On ext4 without a journal (this VM's disk) creating a file scans past every inode freed in the
    last minute or more, which cost whoever created files after a deletion up to 0.7 ms more per
    file. So nothing is deleted before the last round, and the rounds start `settle` seconds after
    a sync, past the deletions of the steps before (other benchmarks, earlier runs)."""
    database = work / "ingest.sqlite3"
    broker = f"sqla+sqlite:///{work / 'ingest-broker.sqlite3'}"
    with Stack(work, f"sqlite:///{database}", broker) as stack:
        exams = json.loads(child(stack.env, "--order", str(runs)))
        sets = []
        for i, (study_uid, accession, _sps) in enumerate(exams):
            write_ct_study(work / f"set{i}", n, study_uid, accession)
            sets.append(work / f"set{i}")
        peer_port, peer_out = free_port(), work / "storescp-out"
        peer_out.mkdir()
        peer = start(
            ["storescp", "-aet", "STORESCP", "-od", str(peer_out), str(peer_port)],
            {**os.environ, "TCP_NODELAY": "1"},
            work / "storescp.log",
        )

        receivers = {
            "ours": lambda i: storescu(stack.port, "RIS", sets[i]),
            "peer": lambda i: storescu(peer_port, "STORESCP", sets[i]),
        }
        if orthanc_available():
            receivers["orthanc"] = lambda i: store_into_fresh_orthanc(work, i, sets[i])
        seconds: dict[str, list[float]] = {name: [] for name in receivers}
        try:
            wait_port(peer_port, peer)
            os.sync()
            time.sleep(settle)
            for i in range(runs):
                names = list(receivers)
                names = names[i % len(names) :] + names[: i % len(names)]
                for name in names:
                    seconds[name].append(receivers[name](i))
        finally:
            stop(peer)
        stored = sum(1 for _ in (work / "ris-storage").rglob("*.dcm"))
    result = {"n": n, "runs": runs, "stored": stored, "orthanc": None, "round_ratio": None, "settle": settle}
    result.update({name: statistics.median(values) for name, values in seconds.items()})
    if "orthanc" in seconds:
        rounds = zip(seconds["ours"], seconds["orthanc"], strict=True)
        result["round_ratio"] = statistics.median(orthanc / ours for ours, orthanc in rounds)
    return result


def mpps_scu(port: int):
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityPerformedProcedureStep

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="RIS")
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc, ModalityPerformedProcedureStep


def measure_latency(work: Path, label: str, database_url: str, broker_url: str, exams: int) -> dict:
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    with Stack(work, database_url, broker_url) as stack:
        placed = json.loads(child(stack.env, "--order", str(exams)))
        last_instance: dict[str, float] = {}
        for i, (study_uid, accession, sps_id) in enumerate(placed):
            folder = work / f"{label}-exam{i}"
            sop_uids = write_ct_study(folder, 5, study_uid, accession, series_count=1)
            series_uid = dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID
            create, done = mpps_datasets(study_uid, accession, sps_id, sop_uids, series_uid)
            assoc, sop_class = mpps_scu(stack.port)
            mpps_uid = generate_uid()
            assoc.send_n_create(create, sop_class, mpps_uid)
            status, _ = assoc.send_n_set(done, sop_class, mpps_uid)
            assoc.release()
            assert status.Status == 0, f"N-SET 0x{status.Status:04X}"
            storescu(stack.port, "RIS", folder)
            last_instance[study_uid] = time.time()
        ready = json.loads(child(stack.env, "--ready-times", "60", *last_instance))
    samples = [ready[uid] - t - QUIET_SECONDS for uid, t in last_instance.items() if uid in ready]
    samples.sort()
    p95 = samples[max(0, round(0.95 * len(samples)) - 1)] if samples else float("nan")
    return {"label": label, "exams": exams, "ready": len(samples), "p50": statistics.median(samples), "p95": p95}


# --- Report -------------------------------------------------------------------------------------


def markdown(ingest: dict, latencies: list[dict], quick: bool) -> str:
    n = ingest["n"]
    ours_rate, peer_rate = n / ingest["ours"], n / ingest["peer"]
    lines = [
        "## C-STORE ingest with arrival tracking: RIS vs DCMTK storescp and Orthanc",
        "",
        f"One `storescu +sd` association of {n:,} small CT instances (≈12 KB, one study, 10 series), "
        f"median of {ingest['runs']} rounds (RIS, storescp, Orthanc one after the other, the order "
        "turning each round), fresh instances each run, TCP_NODELAY=1 everywhere. The RIS "
        "(SQLite + embedded broker, a Celery worker running) writes each file atomically, records and "
        "matches it to its exam and queues the completeness check; storescp only writes files. "
        "Orthanc (1.10 from Debian, SQLite index, a fresh instance per run) stores and indexes them. "
        "Before answering, the RIS fdatasyncs each file and fsyncs its folder; Orthanc fdatasyncs each "
        "file and its index (strace: two per instance); storescp syncs nothing. The rounds start "
        f"{ingest['settle']:g} s after a sync and no file is deleted before the last one: on ext4 without "
        "a journal, as this VM's, creating a file within a minute or more of deletions costs up to "
        "0.7 ms more, and it cost the RIS more than Orthanc (RIS/Orthanc 0.61 in one run started right "
        "after another's clean-up, 2026-11-27, on code ~0.1 ms an instance slower than this)."
        + (" Quick mode: small N." if quick else ""),
        "",
        "| receiver | seconds | instances/s |",
        "|---|---|---|",
        f"| RIS (rundicom + worker) | {ingest['ours']:.3f} | {ours_rate:,.0f} |",
        f"| DCMTK storescp | {ingest['peer']:.3f} | {peer_rate:,.0f} |",
    ]
    if ingest.get("orthanc"):
        orthanc_rate = n / ingest["orthanc"]
        lines.append(f"| Orthanc | {ingest['orthanc']:.3f} | {orthanc_rate:,.0f} |")
        versus_orthanc = (
            f"RIS/Orthanc: **{ours_rate / orthanc_rate:.2f}** (target ≥ 0.8; median of the rounds' own "
            f"ratios {ingest['round_ratio']:.2f}). "
        )
    else:
        versus_orthanc = "Orthanc not installed: RIS against peers.md's measured Orthanc 390/s: " + (
            f"**{ours_rate / 390:.2f}**. "
        )
    lines += [
        "",
        f"Ratio RIS/storescp (instances/s): **{ours_rate / peer_rate:.2f}**; "
        + versus_orthanc
        + f"Files kept by the RIS after all runs: {ingest['stored']:,}.",
        "",
        "### Scan to READY_FOR_READING",
        "",
        "Per exam: MPPS IN PROGRESS, N-SET COMPLETED listing 5 instances, then `storescu` of those 5. "
        f"Latency = the audited READY_FOR_READING transition - storescu's exit - quiet period ({QUIET_SECONDS:g} s). "
        "Target p95 ≤ 2 s on RabbitMQ.",
        "",
        "| database + broker | exams | ready | p50 (s) | p95 (s) |",
        "|---|---|---|---|---|",
    ]
    for r in latencies:
        lines.append(f"| {r['label']} | {r['exams']} | {r['ready']} | {r['p50']:.2f} | **{r['p95']:.2f}** |")
    return "\n".join(lines) + "\n"


def run(quick: bool) -> str:
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        return "## C-STORE ingest\n\nSkipped: DCMTK (storescu, storescp) is not installed.\n"
    n, runs, exams = (200, 2, 5) if quick else (1000, 5, 20)
    latencies = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        work = Path(tmp)
        (work / "ingest").mkdir()
        ingest = measure_ingest(work / "ingest", n, runs, settle=0 if quick else SETTLE_SECONDS)
        print(f"   ingest: {ingest}", flush=True)
        (work / "sqlite").mkdir()
        latencies.append(
            measure_latency(
                work / "sqlite",
                "SQLite + embedded broker",
                f"sqlite:///{work / 'sqlite' / 'db.sqlite3'}",
                f"sqla+sqlite:///{work / 'sqlite' / 'broker.sqlite3'}",
                exams,
            )
        )
        print(f"   latency: {latencies[-1]}", flush=True)
        database = create_postgres("bench_store") if reachable(5672) else None
        if database:
            (work / "pg").mkdir()
            try:
                url = postgres_url(database)
                latencies.append(measure_latency(work / "pg", "PostgreSQL + RabbitMQ", url, RABBITMQ_URL, exams))
                print(f"   latency: {latencies[-1]}", flush=True)
            finally:
                drop_postgres(database)
    return markdown(ingest, latencies, quick)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--order":
        child_order(int(sys.argv[2]))
    elif len(sys.argv) >= 2 and sys.argv[1] == "--ready-times":
        child_ready_times(sys.argv[3:], float(sys.argv[2]))
    else:
        print(run(quick="--quick" in sys.argv))
