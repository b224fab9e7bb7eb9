#!/usr/bin/env python3
"""MWL C-FIND latency vs worklist size: our SCP against DCMTK wlmscpfs and Orthanc on the same steps.

For each N a generator writes N scheduled steps across 5 modalities and D days (D = max(10,
N/1000), so one day holds at most 1,000 steps) twice: into a fresh SQLite database of the RIS
(bulk rows with their prepared worklist answers, as the workflow signal would build them) and
as N `.wl` files (pydicom; the same content dump2dcm would write) for wlmscpfs and, when the
Debian package is installed, Orthanc's ModalityWorklists plugin. All servers run on loopback
with TCP_NODELAY=1 and are queried by DCMTK `findscu -W` (its ~35 ms start-up is in every
figure, for every server):

- narrow: one patient (PatientID of the middle entry);
- typical: a console's own day (Scheduled Station AE CT01 + one SPS start date);
- broad: everything on one day (one SPS start date; 1,000 items from N = 10k).

`run(quick)` returns the Markdown section with medians, match counts and ratios ours/peer,
and writes docs/benchmarks/mwl_latency.png (latency vs N, log scales, matplotlib).
Usage alone: `.venv/bin/python bench/bench_mwl.py [--quick]`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PY, ROOT, cpu_seconds, free_port, start, stop, wait_port

PLOT = ROOT / "docs" / "benchmarks" / "mwl_latency.png"
MODALITIES = ["CT", "MR", "US", "CR", "DX"]
QUERY_DAY = "20250102"
ORTHANC_WORKLISTS_PLUGIN = "/usr/share/orthanc/plugins/libModalityWorklists.so"
# The servers compared (name -> called AE title); Orthanc when its Debian package is installed.
SERVERS = {"ris": "RIS", "wlmscpfs": "WLAE"}
if shutil.which("Orthanc") and Path(ORTHANC_WORKLISTS_PLUGIN).exists():
    SERVERS["orthanc"] = "ORTHANC"
LABELS = {"ris": "RIS", "wlmscpfs": "wlmscpfs", "orthanc": "Orthanc"}
SPS = "ScheduledProcedureStepSequence[0]"
RETURN_KEYS = [
    "PatientName",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    f"{SPS}.ScheduledProcedureStepStartTime",
    f"{SPS}.ScheduledProcedureStepID",
    f"{SPS}.ScheduledProcedureStepDescription",
]
QUERIES = {
    "narrow": [
        "PatientID=PID{middle:07d}",
        f"{SPS}.Modality",
        f"{SPS}.ScheduledStationAETitle",
        f"{SPS}.ScheduledProcedureStepStartDate",
    ],
    "typical": [
        "PatientID",
        f"{SPS}.Modality",
        f"{SPS}.ScheduledStationAETitle=CT01",
        f"{SPS}.ScheduledProcedureStepStartDate={QUERY_DAY}",
    ],
    "broad": [
        "PatientID",
        f"{SPS}.Modality",
        f"{SPS}.ScheduledStationAETitle",
        f"{SPS}.ScheduledProcedureStepStartDate={QUERY_DAY}",
    ],
}


# --- The worklist generator (runs in a child process with its own DATABASE_URL) -------------


def step_values(i: int, n: int) -> dict:
    days = max(10, n // 1000)
    modality = MODALITIES[(i // days) % 5]  # every day has every modality
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        days=i % days, hours=7 + (i // days) % 12, minutes=(i * 7) % 60
    )
    return {
        "patient_id": f"PID{i:07d}",
        "family": "TEST",
        "given": f"PATIENT{i:07d}",
        "birth": dt.date(1920 + i % 80, 1, 1),
        "sex": "MF"[i % 2],
        "accession": f"ACC{i:07d}",
        "rp_id": f"RP{i:07d}",
        "sps_id": f"SPS{i:07d}",
        "study_uid": f"1.2.826.0.1.3680043.8.498.{n}.{i}",
        "modality": modality,
        "station": f"{modality}01",
        "start": start,
        "procedure": f"{modality} EXAM {i}",
        "step": f"{modality} SPS DESCRIPTION {i}",
    }


def generate(n: int, wl_dir: Path) -> None:
    """Fill the (empty, migrated) database of DATABASE_URL and write wl_dir/WLAE/*.wl."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ris.settings")
    sys.path.insert(0, str(ROOT))
    django.setup()
    from django.db import transaction

    from ris.models import ImagingOrder, Patient, RequestedProcedure, ScheduledStep, fold_for_search
    from worklist.datasets import build_mwl_dataset

    folder = wl_dir / "WLAE"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lockfile").touch()
    batch = 2000
    for first in range(0, n, batch):
        rows = [step_values(i, n) for i in range(first, min(n, first + batch))]
        with transaction.atomic():
            patients = Patient.objects.bulk_create(
                [
                    Patient(
                        patient_id=r["patient_id"],
                        family_name=r["family"],
                        given_name=r["given"],
                        name_search=fold_for_search(f"{r['family']}^{r['given']}"),
                        birth_date=r["birth"],
                        sex=r["sex"],
                    )
                    for r in rows
                ]
            )
            orders = ImagingOrder.objects.bulk_create(
                [
                    ImagingOrder(patient=p, filler_order_number=r["accession"], referring_physician="REF^DOCTOR")
                    for p, r in zip(patients, rows, strict=True)
                ]
            )
            exams = RequestedProcedure.objects.bulk_create(
                [
                    RequestedProcedure(
                        order=o,
                        accession_number=r["accession"],
                        requested_procedure_id=r["rp_id"],
                        study_instance_uid=r["study_uid"],
                        procedure_description=r["procedure"],
                        modality=r["modality"],
                        status="SCHEDULED",
                    )
                    for o, r in zip(orders, rows, strict=True)
                ]
            )
            steps = [
                ScheduledStep(
                    requested_procedure=e,
                    sps_id=r["sps_id"],
                    modality=r["modality"],
                    station_ae_title=r["station"],
                    start=r["start"],
                    description=r["step"],
                    performing_physician="TECH^ONE",
                )
                for e, r in zip(exams, rows, strict=True)
            ]
            for step in steps:
                step.mwl_dataset = build_mwl_dataset(step)
            ScheduledStep.objects.bulk_create(steps)
        for i, r in enumerate(rows, start=first):
            write_wl(folder / f"wl{i:07d}.wl", r)


def write_wl(path: Path, r: dict) -> None:
    """The same entry as a worklist file (peers.md §1 layout)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber = r["accession"]
    ds.ReferringPhysicianName = "REF^DOCTOR"
    ds.PatientName = f"{r['family']}^{r['given']}"
    ds.PatientID = r["patient_id"]
    ds.PatientBirthDate = r["birth"].strftime("%Y%m%d")
    ds.PatientSex = r["sex"]
    ds.StudyInstanceUID = r["study_uid"]
    ds.RequestedProcedureDescription = r["procedure"]
    sps = Dataset()
    sps.Modality = r["modality"]
    sps.ScheduledStationAETitle = r["station"]
    sps.ScheduledProcedureStepStartDate = r["start"].strftime("%Y%m%d")
    sps.ScheduledProcedureStepStartTime = r["start"].strftime("%H%M%S")
    sps.ScheduledPerformingPhysicianName = "TECH^ONE"
    sps.ScheduledProcedureStepDescription = r["step"]
    sps.ScheduledProcedureStepID = r["sps_id"]
    ds.ScheduledProcedureStepSequence = [sps]
    ds.RequestedProcedureID = r["rp_id"]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)


# --- Running the servers and timing findscu ---------------------------------------------


def query_keys(kind: str, n: int) -> list[str]:
    return [k.format(middle=n // 2) for k in QUERIES[kind]] + RETURN_KEYS


def findscu(port: int, called: str, keys: list[str], quiet: bool = True) -> subprocess.CompletedProcess:
    argv = ["findscu", "-W", "-aet", "CT01", "-aec", called, "127.0.0.1", str(port)]
    for key in keys:
        argv += ["-k", key]
    argv.append("-q" if quiet else "-v")
    return subprocess.run(argv, capture_output=True, timeout=600, env={**os.environ, "TCP_NODELAY": "1"})


def count_matches(port: int, called: str, keys: list[str]) -> int:
    log = findscu(port, called, keys, quiet=False)
    return (log.stdout + log.stderr).decode("latin-1").count("(Pending)")


def timed(port: int, called: str, keys: list[str]) -> float:
    started = time.perf_counter()
    result = findscu(port, called, keys)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"findscu failed against {called}: {result.stderr[-500:]!r}")
    return elapsed


def compare(servers: dict[str, tuple[int, str, int]], keys: list[str], runs: int) -> dict[str, tuple[float, float]]:
    """Median wall time and mean server CPU per query, runs interleaved so that both servers
    meet the same background load."""
    for port, called, _ in servers.values():
        timed(port, called, keys)  # warm-up
    walls: dict[str, list[float]] = {name: [] for name in servers}
    cpu: dict[str, float] = dict.fromkeys(servers, 0.0)
    for _ in range(runs):
        for name, (port, called, pid) in servers.items():
            before = cpu_seconds(pid)
            walls[name].append(timed(port, called, keys))
            cpu[name] += cpu_seconds(pid) - before
    return {name: (statistics.median(walls[name]), cpu[name] / runs) for name in servers}


def orthanc_config(work: Path, n: int, wl_dir: Path, dicom_port: int) -> Path:
    """Orthanc with its ModalityWorklists plugin on the same .wl folder (peers.md §3)."""
    config = {
        "Name": "BENCH-ORTHANC",
        "StorageDirectory": str(work / f"orthanc{n}"),
        "IndexDirectory": str(work / f"orthanc{n}"),
        "Plugins": [ORTHANC_WORKLISTS_PLUGIN],
        "Worklists": {"Enable": True, "Database": str(wl_dir / "WLAE"), "FilterIssuerAet": False, "LimitAnswers": 0},
        "HttpServerEnabled": True,
        "HttpPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowFindWorklist": True,
        "DicomThreadsCount": 4,
        "DicomAssociationCloseDelay": 0,
    }
    path = work / f"orthanc{n}.json"
    path.write_text(json.dumps(config))
    return path


def measure(n: int, runs: int, work: Path) -> list[dict]:
    db = work / f"mwl{n}.sqlite3"
    wl_dir = work / f"wl{n}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RIS_")},
        "DATABASE_URL": f"sqlite:///{db}",
        "RIS_TIME_ZONE": "UTC",
        "RIS_DICOM_ALLOW_ANY_AE": "1",
        "DJANGO_SETTINGS_MODULE": "ris.settings",
        "TCP_NODELAY": "1",
    }
    subprocess.run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    started = time.monotonic()
    subprocess.run([PY, __file__, "--generate", str(n), str(wl_dir)], cwd=ROOT, env=env, check=True)
    print(f"   N={n}: generated in {time.monotonic() - started:.0f} s", flush=True)
    peer_env = {**os.environ, "TCP_NODELAY": "1"}
    ports = {name: free_port() for name in SERVERS}
    processes = {
        "ris": start(
            [PY, "manage.py", "rundicom"],
            {**env, "RIS_DICOM_PORT": str(ports["ris"]), "RIS_LOG_LEVEL": "WARNING"},
        ),
        # -s: one process (no fork per association), so its CPU time is measurable; queries come
        # one at a time, so this only saves wlmscpfs the fork.
        "wlmscpfs": start(["wlmscpfs", "-s", "-dfp", str(wl_dir), str(ports["wlmscpfs"])], peer_env),
    }
    if "orthanc" in SERVERS:
        (work / "orthanc-logs").mkdir(exist_ok=True)
        config = orthanc_config(work, n, wl_dir, ports["orthanc"])
        processes["orthanc"] = start(["Orthanc", f"--logdir={work / 'orthanc-logs'}", str(config)], peer_env, cwd=work)
    rows = []
    try:
        for name, process in processes.items():
            wait_port(ports[name], process)
        servers = {name: (ports[name], SERVERS[name], processes[name].pid) for name in processes}
        for kind in QUERIES:
            keys = query_keys(kind, n)
            row = {"n": n, "query": kind, "runs": runs}
            row["matches"] = {name: count_matches(port, called, keys) for name, (port, called, _) in servers.items()}
            figures = compare(servers, keys, runs)
            row["wall"] = {name: f[0] for name, f in figures.items()}
            row["cpu"] = {name: f[1] for name, f in figures.items()}
            rows.append(row)
            print(f"   N={n} {kind}: {row}", flush=True)
    finally:
        for process in processes.values():
            stop(process, grace=20)
        shutil.rmtree(wl_dir, ignore_errors=True)
        shutil.rmtree(work / f"orthanc{n}", ignore_errors=True)
        db.unlink(missing_ok=True)
    return rows


# --- Report ------------------------------------------------------------------------------


def plot(rows: list[dict], path: Path = PLOT) -> bool:
    """Latency vs N on log-log axes: a colour per query, a line style per server."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator
    except ImportError:
        return False
    colours = {"narrow": "#1b9e77", "typical": "#d95f02", "broad": "#7570b3"}
    styles = {"ris": "-", "wlmscpfs": "--", "orthanc": ":"}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for kind, colour in colours.items():
        for server, style in styles.items():
            points = sorted((r["n"], r["wall"][server]) for r in rows if r["query"] == kind and server in r["wall"])
            if points:
                ns, secs = zip(*points, strict=True)
                label = f"{kind}, {LABELS[server]}"
                ax.plot(ns, secs, style, color=colour, marker="o", markersize=3, linewidth=2, label=label)
    ns = sorted({r["n"] for r in rows})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ns, [f"N={n:,}" for n in ns])
    ax.minorticks_off()
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g} s"))
    ax.set_ylabel("median seconds per query (log)")
    ax.set_title("MWL C-FIND median latency vs N (findscu -W, loopback)", fontsize=10)
    ax.grid(True, which="major", color="#ddd")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown(rows: list[dict], quick: bool, plotted: bool) -> str:
    peers = [name for name in SERVERS if name != "ris"]
    head = ["N", "query", "matches", "RIS (s)"] + [f"{LABELS[p]} (s)" for p in peers]
    head += [f"RIS/{LABELS[p]}" for p in peers] + ["server CPU ms: " + " / ".join(LABELS[s] for s in SERVERS), "runs"]
    lines = [
        "## Modality Worklist C-FIND (RAD-5): RIS vs DCMTK wlmscpfs" + (" and Orthanc" if "orthanc" in SERVERS else ""),
        "",
        "Median wall time of one `findscu -W` run (association, C-FIND, all responses, release; DCMTK "
        "start-up included for every server; runs of the servers interleaved so they meet the same "
        "background load) and the server process's CPU time per query (wlmscpfs runs with -s, single "
        "process). "
        "Same N steps in every server (RIS: SQLite, the embedded default; peers: one .wl file per step), "
        f"TCP_NODELAY=1 everywhere. narrow = one PatientID; typical = Scheduled Station AE CT01 + SPS "
        f"start date {QUERY_DAY}; broad = every step on that date (at most 1,000)."
        + (" Quick mode: small N only." if quick else ""),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        counts = set(r["matches"].values())
        matches = str(r["matches"]["ris"]) if len(counts) == 1 else json.dumps(r["matches"])
        cells = [f"{r['n']:,}", r["query"], matches, f"{r['wall']['ris']:.3f}"]
        cells += [f"{r['wall'][p]:.3f}" for p in peers]
        cells += [f"**{r['wall']['ris'] / r['wall'][p]:.2f}**" for p in peers]
        cells += [" / ".join(f"{r['cpu'][s] * 1000:.0f}" for s in SERVERS), str(r["runs"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if plotted:
        lines += [f"![MWL latency vs N](benchmarks/{PLOT.name})", ""]
    return "\n".join(lines)


def run(quick: bool) -> str:
    if shutil.which("wlmscpfs") is None or shutil.which("findscu") is None:
        return "## Modality Worklist C-FIND\n\nSkipped: DCMTK (wlmscpfs, findscu) is not installed.\n"
    sizes = {200: 5, 1000: 5} if quick else {1000: 10, 10_000: 7, 100_000: 3}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-mwl-") as tmp:
        for n, runs in sizes.items():
            rows += measure(n, runs, Path(tmp))
    return markdown(rows, quick, plot(rows))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--generate":
        generate(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        print(run(quick="--quick" in sys.argv))
