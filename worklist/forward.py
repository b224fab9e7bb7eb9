"""Forwarding received instances to the PACS (RIS_PACS = "AET@host:port") through the outbox:
one outbox row per stored instance (destination "pacs", payload = the stored file), written when
the arrival is recorded, delivered by a C-STORE SCU in the worker with the outbox's retries and
backoff, visible (attempts, last error, FAILED) to an operator, never lost.

No forwarding loops: instances whose calling AE is the PACS itself (copies it sends us) are
never forwarded back.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from dataclasses import dataclass

from django.conf import settings
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from ris import outbox
from ris.models import OutboundMessage
from worklist import reactor

log = logging.getLogger(__name__)

DESTINATION = "pacs"
# PS3.4 Table B.2-1: warnings (0xB000, 0xB006, 0xB007) mean the PACS kept the instance.
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int


def parse_peer(value: str) -> Peer | None:
    """An "AET@host:port" setting parsed; None when it is empty."""
    value = value.strip()
    if not value:
        return None
    ae_title, _, address = value.partition("@")
    host, _, port = address.rpartition(":")
    return Peer(ae_title.strip(), host.strip() or "127.0.0.1", int(port))


def pacs() -> Peer | None:
    """RIS_PACS parsed; None when unset (no forwarding)."""
    return parse_peer(settings.RIS_PACS)


def should_forward(calling_ae_title: str) -> bool:
    peer = pacs()
    return peer is not None and calling_ae_title.strip() != peer.ae_title


def control_id(sop_instance_uid: str) -> str:
    # A SOP Instance UID may be 64 characters; the outbox id column is 64 too.
    return "pacs-" + hashlib.sha1(sop_instance_uid.encode()).hexdigest()


def queue_forward(sop_instance_uid: str, file_path: str) -> None:
    """Write the outbox row for one stored instance (once per UID) and queue it after commit."""
    message, created = OutboundMessage.objects.get_or_create(
        message_control_id=control_id(sop_instance_uid),
        defaults={"destination": DESTINATION, "payload": file_path},
    )
    if created:
        outbox.enqueue_on_commit([message])


def send_c_store(message: OutboundMessage) -> None:
    """The outbox sender: C-STORE the stored file to RIS_PACS; DeliveryError on any failure."""
    peer = pacs()
    if peer is None:
        raise outbox.DeliveryError("RIS_PACS is not set", retry=False)
    try:
        ds = dcmread(message.payload)
    except FileNotFoundError as exc:
        raise outbox.DeliveryError(f"stored file is gone: {message.payload}", retry=False) from exc
    reactor.install()  # pynetdicom's polling loops cost ~11 ms an association (16 -> 5 ms)
    ae = AE(ae_title=settings.RIS_AE_TITLE)
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    if ds.file_meta.TransferSyntaxUID not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise outbox.DeliveryError(f"association with {settings.RIS_PACS} refused or failed")
    try:
        if assoc.dul.socket and assoc.dul.socket.socket:
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        raise outbox.DeliveryError("no C-STORE response from the PACS")
    if code != 0x0000 and code not in WARNING_STATUSES:
        comment = getattr(status, "ErrorComment", "") or ""
        # Out of resources (0xA7xx) may pass; a refusal of the data set itself will not.
        raise outbox.DeliveryError(f"PACS answered 0x{code:04X} {comment}".strip(), retry=(code & 0xFF00) == 0xA700)


def register() -> None:
    """Make the outbox deliver (and its sweep find) "pacs" rows with send_c_store."""
    outbox.CHANNELS.setdefault(DESTINATION, "dicom")
    outbox.register_sender(DESTINATION, send_c_store)
