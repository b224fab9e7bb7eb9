"""The SCP's event-driven association reactors (worklist/reactor.py): what they open per
association is closed when it ends, and another pynetdicom version keeps its own reactors.
Their behaviour under every DIMSE service, abort and timeout is what the DICOM test files
(MWL, MPPS, storage, IAN, fuzz, TLS) exercise against `rundicom`, which runs them."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pynetdicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import manage, require_tool, running
from tests.test_arrival_tracking import ct_file, storescu
from tests.test_mpps_scp import register_station
from worklist import reactor

pytestmark = pytest.mark.live

ASSOCIATIONS = 20


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def settled(pid: int, files: int, thread_count: int, within: float = 15.0) -> tuple[int, int]:
    """(open files, threads) once back to at most the given counts, or as they are at the end."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        now = open_files(pid), threads(pid)
        if now[0] <= files and now[1] <= thread_count:
            return now
        time.sleep(0.2)
    return open_files(pid), threads(pid)


def test_associations_leave_no_sockets_connections_or_threads_behind(ris_env, tmp_path):
    """What an association opens (its wake-up socket pair, the database connection of the DUL
    thread the C-STORE handlers run on) and its two threads are gone once it ends, released or
    cut off."""
    register_station("CT1")
    echoscu = require_tool("echoscu")
    port = int(ris_env["RIS_DICOM_PORT"])
    study = generate_uid()
    with running(manage("rundicom"), ris_env, tmp_path / "dicom.log", port) as scp:
        warm_up = [ct_file(tmp_path / "warm", study, generate_uid(), generate_uid())]
        assert "Received Store Response (Success)" in storescu(port, warm_up)
        time.sleep(1)  # the warm-up association's threads end
        baseline = open_files(scp.pid), threads(scp.pid)
        for i in range(ASSOCIATIONS):
            series = generate_uid()
            files = [ct_file(tmp_path / f"in{i}", study, series, generate_uid()) for _ in range(2)]
            assert storescu(port, files).count("Received Store Response (Success)") == 2
            subprocess.run([echoscu, "-aec", "RIS", "-aet", "CT1", "127.0.0.1", str(port)], check=True, timeout=30)
        # One association cut off once established (no release, no abort): its DUL sees the socket close.
        cut_off = AE(ae_title="CT1")
        cut_off.add_requested_context(Verification)
        assoc = cut_off.associate("127.0.0.1", port, ae_title="RIS")
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
        assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
        assoc.dul.socket.socket.close()
        assoc.kill()
        after = settled(scp.pid, baseline[0] + 2, baseline[1])
    assert after[0] <= baseline[0] + 2, f"{after[0] - baseline[0]} files open after {2 * ASSOCIATIONS} associations"
    assert after[1] <= baseline[1], f"{after[1] - baseline[1]} more threads after {ASSOCIATIONS * 2} associations"


def test_another_pynetdicom_version_keeps_its_stock_reactors(monkeypatch):
    assert not reactor.STOCK, "the test process itself must not run the patched reactors"
    stock = [getattr(owner, name) for owner, name, _ in reactor._REPLACEMENTS]
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    assert reactor.install() is False
    assert [getattr(owner, name) for owner, name, _ in reactor._REPLACEMENTS] == stock
    assert not any(replacement in stock for _, _, replacement in reactor._REPLACEMENTS)
    assert not reactor.STOCK
