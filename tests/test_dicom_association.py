"""The DICOM SCP's association policy, checked with DCMTK's echoscu (an independent peer)."""

import subprocess

import pytest

from tests.conftest import require_tool
from worklist.models import Modality

pytestmark = pytest.mark.live


def echo(port: int, calling: str, called: str = "RIS") -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"TCP_NODELAY": "1"},
    )


def test_echo_from_registered_modality_succeeds(dicom_scp):
    Modality.objects.create(ae_title="CT1", modality="CT")
    result = echo(dicom_scp[1], "CT1")
    assert result.returncode == 0, result.stderr


def test_echo_from_unknown_ae_is_rejected_as_calling_ae_not_recognised(dicom_scp):
    Modality.objects.create(ae_title="CT1", modality="CT")
    result = echo(dicom_scp[1], "NOBODY")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr


def test_disabled_modality_is_rejected(dicom_scp):
    Modality.objects.create(ae_title="OLDCT", modality="CT", enabled=False)
    assert echo(dicom_scp[1], "OLDCT").returncode != 0


def test_modality_registered_while_running_is_accepted_at_once(dicom_scp):
    assert echo(dicom_scp[1], "NEWMR").returncode != 0
    Modality.objects.create(ae_title="NEWMR", modality="MR")
    assert echo(dicom_scp[1], "NEWMR").returncode == 0


def test_any_ae_accepted_when_allowed(ris_env, tmp_path):
    from tests.conftest import manage, running

    ris_env["RIS_DICOM_ALLOW_ANY_AE"] = "1"
    port = int(ris_env["RIS_DICOM_PORT"])
    with running(manage("rundicom"), ris_env, tmp_path / "dicom.log", port):
        assert echo(port, "ANYONE").returncode == 0
