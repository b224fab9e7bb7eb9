"""DICOM over TLS (issue 9, PS3.15 B.1): `rundicom` with RIS_DICOM_TLS_CERT/KEY (and a CA for
client certificates) against DCMTK's echoscu with +tls and pynetdicom with an ssl context.
Certificates are made here with openssl: a CA, a server certificate for 127.0.0.1 and a
modality's client certificate. (MLLP over TLS is tested in tests/test_hl7_inbound.py.)"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import manage, require_tool, running
from tests.test_mpps_scp import register_station

pytestmark = pytest.mark.live


def openssl(*args: str) -> None:
    subprocess.run([require_tool("openssl"), *args], check=True, capture_output=True)


def make_pki(folder: Path) -> dict[str, Path]:
    """ca.pem/ca.key, server.pem/.key (CN 127.0.0.1, SAN IP) and client.pem/.key, all CA-signed."""
    p = {name: folder / name for name in ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")}
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test RIS CA",
            "-keyout", str(p["ca.key"]), "-out", str(p["ca.pem"]))  # fmt: skip
    for name, cn in (("server", "127.0.0.1"), ("client", "CT1")):
        csr, ext = folder / f"{name}.csr", folder / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n" if name == "server" else "extendedKeyUsage=clientAuth\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", str(p[f"{name}.key"]), "-out", str(csr))  # fmt: skip
        openssl("x509", "-req", "-in", str(csr), "-CA", str(p["ca.pem"]), "-CAkey", str(p["ca.key"]),
                "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(p[f"{name}.pem"]))  # fmt: skip
    return p


@pytest.fixture
def pki(tmp_path) -> dict[str, Path]:
    return make_pki(tmp_path)


@pytest.fixture
def tls_scp(ris_env, tmp_path, pki):
    """rundicom on TLS only, requiring client certificates signed by the test CA."""
    ris_env.update(
        RIS_DICOM_TLS_CERT=str(pki["server.pem"]),
        RIS_DICOM_TLS_KEY=str(pki["server.key"]),
        RIS_DICOM_TLS_CA=str(pki["ca.pem"]),
    )
    register_station("CT1")
    port = int(ris_env["RIS_DICOM_PORT"])
    with running(manage("rundicom"), ris_env, tmp_path / "dicom.log", port):
        yield port


def client_context(pki, with_certificate: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca.pem"]))
    if with_certificate:
        context.load_cert_chain(str(pki["client.pem"]), str(pki["client.key"]))
    return context


def echo(port: int, context: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    tls = (context, "127.0.0.1") if context is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title="RIS", tls_args=tls)
    try:
        return assoc.is_established and assoc.send_c_echo().Status == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()


def test_dcmtk_echoscu_over_tls_with_a_client_certificate_is_answered(tls_scp, pki):
    result = subprocess.run(
        [require_tool("echoscu"), "-v", "+tls", str(pki["client.key"]), str(pki["client.pem"]),
         "+cf", str(pki["ca.pem"]), "-aet", "CT1", "-aec", "RIS", "127.0.0.1", str(tls_scp)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Received Echo Response (Success)" in output, output


def test_pynetdicom_over_tls_with_a_client_certificate_is_answered(tls_scp, pki):
    assert echo(tls_scp, client_context(pki))


def test_plain_tcp_association_to_the_tls_port_gets_nowhere(tls_scp):
    assert not echo(tls_scp, None)


def test_client_without_a_certificate_is_refused_when_a_ca_is_configured(tls_scp, pki):
    assert not echo(tls_scp, client_context(pki, with_certificate=False))
    assert echo(tls_scp, client_context(pki))  # and the listener is still serving


def test_client_with_a_certificate_from_another_ca_is_refused(tls_scp, pki, tmp_path):
    other = make_pki(tmp_path / "other" if (tmp_path / "other").mkdir() is None else tmp_path)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca.pem"]))
    context.load_cert_chain(str(other["client.pem"]), str(other["client.key"]))
    assert not echo(tls_scp, context)


def test_a_silent_connection_to_the_tls_port_does_not_stop_other_modalities(tls_scp, pki):
    """The TLS handshake must not run on the listener's accept loop: a peer that connects and
    sends nothing (or never finishes the handshake) would stop every other association."""
    with socket.create_connection(("127.0.0.1", tls_scp)) as silent:
        unblock = threading.Timer(8, silent.shutdown, (socket.SHUT_RDWR,))
        unblock.start()  # should the listener wait for this peer, the test fails instead of hanging
        started = time.monotonic()
        try:
            assert echo(tls_scp, client_context(pki))
            assert time.monotonic() - started < 5
        finally:
            unblock.cancel()
        silent.settimeout(20)
        assert silent.recv(1) == b""  # and it is closed after the ARTIM timeout (10 s)
