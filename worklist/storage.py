"""Storage SCP (PS3.4 Annex B; the receiving side of IHE RAD-8 when the RIS keeps copies),
swf-spec §7: every standard Storage SOP class in the common transfer syntaxes.

Each instance is written under RIS_STORAGE_DIR/<Study UID>/<Series UID>/<SOP UID>.dcm as it
was received (Part 10, no re-encoding), through a temporary file and an atomic rename, so no
reader ever sees half a file, and flushed to disk (file and directory) before the success status,
so an acknowledged instance survives a crash; a duplicate replaces the file and adds no row. The arrival is
recorded at once; the completeness decision is left to a Celery task, queued for each exam
the first time the association touches it and again when the association ends. With RIS_PACS
set, each instance also gets an outbox row that forwards it there (worklist/forward.py).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
import threading
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connection
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.presentation import AllStoragePresentationContexts

from ris.models import ArrivalSource
from worklist import arrival, forward, tasks
from worklist.mpps import calling_actor

log = logging.getLogger(__name__)

# PS3.4 Table B.2-1 C-STORE statuses.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
# A UID is digits and dots (PS3.5 9.1): anything else must never reach a file name.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# The arrival session of each open association, keyed by id(Association).
_sessions: dict[int, arrival.ArrivalSession] = {}
_sessions_lock = threading.Lock()


class StoreFailure(Exception):
    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status, self.comment = status, comment


def instance_path(study_uid: str, series_uid: str, sop_uid: str) -> Path:
    for uid in (study_uid, series_uid, sop_uid):
        if not (uid and len(uid) <= 64 and UID_PATTERN.match(uid)):
            raise StoreFailure(STATUS_DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"invalid UID {uid[:40]!r}")
    return Path(settings.RIS_STORAGE_DIR) / study_uid / series_uid / f"{sop_uid}.dcm"


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of group 0002 (PS3.5 7.1.2), padded to even length."""
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, "DICM" and the File Meta Information (PS3.10 7.1) for a data set stored as it
    was received. Built by hand: pydicom's writer costs ~0.7 ms an instance, this ~10 us."""
    group = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", sop_class_uid.encode()),
            _element(0x0003, b"UI", sop_instance_uid.encode()),
            _element(0x0010, b"UI", transfer_syntax.encode()),
            _element(0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID.encode()),
            _element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode()),
            _element(0x0016, b"AE", source_ae.encode("ascii", "replace")[:16]),
        )
    )
    return b"\x00" * 128 + b"DICM" + _element(0x0000, b"UL", struct.pack("<I", len(group))) + group


# Directories known to exist: a stored study's folders are made once, not stat'ed per instance.
_known_directories: set[Path] = set()


def sync_directory(directory: Path) -> None:
    """Make the entries of `directory` (a rename, a new file or folder) survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(directory: Path) -> None:
    """mkdir -p, each new folder's entry synced in its parent (a synced file in a folder whose
    own entry was lost would be lost with it)."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:  # another association made it first; it synced it
            continue
        sync_directory(folder.parent)


def write_atomically(path: Path, data: bytes) -> bool:
    """Write through a temporary file in the same directory, flush it to disk, rename it over the
    target and sync the directory: when the C-STORE is answered with success the instance is on
    disk, whole. Returns whether the file existed before (a duplicate). A failure leaves nothing
    behind."""
    if path.parent not in _known_directories:
        make_directories(path.parent)
        _known_directories.add(path.parent)
    existed = os.path.exists(path)
    temporary = path.parent / f".incoming-{path.name}.{threading.get_ident()}.part"
    renamed = False
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            rest = memoryview(data)
            while rest:  # os.write may write less than asked
                rest = rest[os.write(fd, rest) :]
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        renamed = True
        sync_directory(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        if renamed and not existed:  # refused: the file the modality will send again goes too
            path.unlink(missing_ok=True)
        if not path.parent.exists():  # removed behind our back: make it again next time
            _known_directories.discard(path.parent)
        raise
    return existed


def _store(event: evt.Event) -> int:
    try:
        ds = event.dataset
    except Exception as exc:
        raise StoreFailure(STATUS_CANNOT_UNDERSTAND, f"data set cannot be decoded: {type(exc).__name__}") from exc
    sop_uid = arrival.text_of(ds, "SOPInstanceUID")
    if sop_uid != event.request.AffectedSOPInstanceUID:
        raise StoreFailure(STATUS_DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOPInstanceUID differs from the request")
    study_uid = arrival.text_of(ds, "StudyInstanceUID")
    series_uid = arrival.text_of(ds, "SeriesInstanceUID")
    path = instance_path(study_uid, series_uid, sop_uid)
    try:
        header = part10_header(
            event.request.AffectedSOPClassUID,
            sop_uid,
            event.context.transfer_syntax,
            event.assoc.requestor.ae_title.strip(),
        )
        existed = write_atomically(path, header + event.request.DataSet.getvalue())
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        log.error("cannot store %s at %s: %s", sop_uid, path, exc)
        raise StoreFailure(STATUS_OUT_OF_RESOURCES, f"storage unavailable ({reason})") from exc
    session = _session(event)
    try:
        exam_id, new_study = session.record(arrival.instance_from_dataset(ds, str(path)))
    except Exception:
        if not existed:  # nothing half-done: no row, no file
            path.unlink(missing_ok=True)
        raise
    if forward.should_forward(session.actor.name):
        forward.queue_forward(sop_uid, str(path))
    if new_study:
        tasks.schedule_check_after_arrival([exam_id])
    return STATUS_SUCCESS


def _session(event: evt.Event) -> arrival.ArrivalSession:
    """This association's session; on its first instance the thread's database connection is
    checked once (not per instance: with CONN_MAX_AGE 0 that would reconnect every time)."""
    with _sessions_lock:
        session = _sessions.get(id(event.assoc))
    if session is None:
        close_old_connections()
        session = arrival.ArrivalSession(calling_actor(event), ArrivalSource.STORE)
        with _sessions_lock:
            _sessions[id(event.assoc)] = session
    return session


def handle_store(event: evt.Event) -> int | Dataset:
    try:
        return _store(event)
    except StoreFailure as failure:
        log.warning("C-STORE refused: 0x%04X %s", failure.status, failure.comment)
        return _status(failure.status, failure.comment)
    except Exception as exc:
        log.exception("C-STORE failed")
        return _status(STATUS_OUT_OF_RESOURCES, f"could not record the instance: {type(exc).__name__}")


def _status(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


def handle_association_end(event: evt.Event) -> None:
    """Released or aborted: the studies' last arrival is refreshed, every exam the association
    touched gets a completeness check (the first may have run before the last instance), and
    this thread's database connection is closed."""
    with _sessions_lock:
        session = _sessions.pop(id(event.assoc), None)
    if session is not None:
        try:
            tasks.schedule_check_after_arrival(session.close())
        except Exception:
            log.exception("closing the arrival session failed; the sweep will check its exams")
    connection.close()


def register(ae: AE) -> list[tuple]:
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    return [
        (evt.EVT_C_STORE, handle_store),
        (evt.EVT_RELEASED, handle_association_end),
        (evt.EVT_ABORTED, handle_association_end),
        # A connection dropped without release or abort still ends its session.
        (evt.EVT_CONN_CLOSE, handle_association_end),
    ]
