"""What every benchmark needs around the thing it measures: free ports, starting and stopping
servers, their CPU time and process tree from /proc, a scratch PostgreSQL database, and the MPPS a
modality sends.

Benchmark modules import it as `common` (bench/ is on sys.path both under bench/run.py and when a
module runs alone as `python bench/bench_x.py`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
RABBITMQ_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


# --- ports -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def postgres_and_rabbitmq() -> bool:
    """Both production servers answer on their default loopback ports."""
    return reachable(5432) and reachable(5672)


# --- processes ---------------------------------------------------------------------------------


def start(argv: list[str], env: dict[str, str] | None = None, log: Path | None = None, cwd: Path = ROOT):
    """A server in its own session (so stop() reaches every process it forks), output to `log`."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log:
            out.close()


def wait_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until something listens on `port`; fails at once if `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            name = Path(str(process.args[0])).name if isinstance(process.args, list) else "process"
            raise RuntimeError(f"{name} exited with {process.returncode} before listening on {port}")
        if reachable(port):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port} after {timeout:.0f} s")


def stop(process: subprocess.Popen, sig: int = signal.SIGINT, grace: float = 30) -> None:
    """Signal the process (its whole group when it leads one), SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    group = _leads_group(process.pid)
    (os.killpg if group else os.kill)(process.pid, sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        (os.killpg if group else os.kill)(process.pid, signal.SIGKILL)
        process.wait()


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


# --- /proc ---------------------------------------------------------------------------------------


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """User + system CPU time of a process, with the children it has reaped; `tree` adds every
    live descendant (pre-forked listeners, pool processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for current in descendants(pid) if tree else [pid]:
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15]) / tick
    return total


def postgres_cpu_seconds() -> float | None:
    """CPU time of the local PostgreSQL server: every postgres process's own, plus the
    postmaster's reaped children (backends that ended with their connection). None when no
    local PostgreSQL process is readable. Includes other databases' work: a quiet machine only."""
    tick, total, found = os.sysconf("SC_CLK_TCK"), 0.0, False
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if comm not in ("postgres", "postmaster"):
            continue
        found = True
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        total += (int(fields[13]) + int(fields[14])) / tick  # cutime, cstime: reaped backends
    return total if found else None


# --- a scratch PostgreSQL database -------------------------------------------------------------------


def _admin_connection():
    import psycopg

    return psycopg.connect(PG_ADMIN_URL.replace("postgres://", "postgresql://"), autocommit=True)


def create_postgres(prefix: str) -> str | None:
    """A fresh database named `<prefix>_<random>`, or None when PostgreSQL does not answer."""
    if not reachable(5432):
        return None
    name = f"{prefix}_{os.urandom(4).hex()}"
    with _admin_connection() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def postgres_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_postgres(name: str) -> None:
    with _admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- a modality's MPPS -------------------------------------------------------------------------------


def mpps_datasets(
    study_uid: str,
    accession: str,
    sps_id: str,
    sop_uids: list[str],
    series_uid: str,
    *,
    station: str = "BENCH",
    patient_id: str = "BENCH1",
    label: str = "BENCH",
):
    """The N-CREATE (IN PROGRESS) and N-SET (COMPLETED, listing `sop_uids` as CT images of one
    series) datasets a modality sends for one scheduled step."""
    from pydicom.dataset import Dataset
    from pydicom.uid import CTImageStorage

    item = Dataset()
    item.StudyInstanceUID, item.AccessionNumber, item.ScheduledProcedureStepID = study_uid, accession, sps_id
    item.RequestedProcedureID, item.ReferencedStudySequence, item.ScheduledProtocolCodeSequence = "", [], []
    create = Dataset()
    create.ScheduledStepAttributesSequence = [item]
    create.PatientName, create.PatientID = f"{label}^PATIENT", patient_id
    create.PerformedProcedureStepID, create.PerformedStationAETitle, create.Modality = "PPS", station, "CT"
    create.PerformedProcedureStepStartDate, create.PerformedProcedureStepStartTime = "20260101", "120000"
    create.PerformedProcedureStepStatus = "IN PROGRESS"
    create.PerformedSeriesSequence = []
    series = Dataset()
    series.SeriesInstanceUID, series.ProtocolName = series_uid, label
    refs = []
    for uid in sop_uids:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, uid
        refs.append(ref)
    series.ReferencedImageSequence = refs
    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    done.PerformedProcedureStepEndDate, done.PerformedProcedureStepEndTime = "20260101", "121000"
    done.PerformedSeriesSequence = [series]
    return create, done
