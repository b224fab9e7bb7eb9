"""Forwarding MPPS to an Image Manager (IHE PPS Manager, RAD-6/RAD-7 forward; swf-spec §1).

RIS_MPPS_FORWARD = "AET@host:port" names the MPPS SCP that receives a copy of every N-CREATE
and N-SET the RIS accepts, as the modality sent it. Each copy is an outbox row (destination
"mpps") written in the transaction that stored the MPPS, delivered by a worker with the
outbox's retries and backoff, in order per exam, so an N-SET never overtakes its N-CREATE.

The modality is never refused because forwarding failed (the row just waits), and MPPS that
come from the forward target itself are not sent back to it (no loops).
"""

from __future__ import annotations

import hashlib
import json
import socket

from django.conf import settings
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from ris import outbox
from ris.models import OutboundMessage, PerformedStep
from worklist import reactor
from worklist.forward import Peer, parse_peer

DESTINATION = "mpps"
N_CREATE, N_SET = "N-CREATE", "N-SET"
STATUS_DUPLICATE_SOP_INSTANCE = 0x0111


def target() -> Peer | None:
    """RIS_MPPS_FORWARD parsed; None when unset (no forwarding)."""
    return parse_peer(settings.RIS_MPPS_FORWARD)


def should_forward(calling_ae_title: str) -> bool:
    peer = target()
    return peer is not None and calling_ae_title.strip() != peer.ae_title


def queue_forward(performed: PerformedStep, operation: str, dataset: Dataset) -> None:
    """Write the outbox row for one accepted N-CREATE or N-SET, inside the caller's transaction."""
    uid = performed.sop_instance_uid
    prefix = "mpps-" + hashlib.sha1(uid.encode()).hexdigest()[:40]
    sequence = OutboundMessage.objects.filter(message_control_id__startswith=prefix).count()
    exam_id = performed.scheduled_steps.values_list("requested_procedure_id", flat=True).first()
    payload = json.dumps({"operation": operation, "sop_instance_uid": uid, "dataset": dataset.to_json_dict()})
    message = outbox.create_message(
        destination=DESTINATION,
        requested_procedure_id=exam_id,
        message_control_id=f"{prefix}-{sequence}",
        payload=payload,
    )
    outbox.enqueue_on_commit([message])


def send(message: OutboundMessage) -> None:
    """The outbox sender: replay the N-CREATE or N-SET to RIS_MPPS_FORWARD."""
    peer = target()
    if peer is None:
        raise outbox.DeliveryError("RIS_MPPS_FORWARD is not set", retry=False)
    body = json.loads(message.payload)
    dataset = Dataset.from_json(body["dataset"])
    reactor.install()  # pynetdicom's polling loops cost ~11 ms an association (16 -> 5 ms)
    ae = AE(ae_title=settings.RIS_AE_TITLE)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise outbox.DeliveryError(f"association with {settings.RIS_MPPS_FORWARD} refused or failed")
    try:
        if assoc.dul.socket and assoc.dul.socket.socket:
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if body["operation"] == N_CREATE:
            status, _ = assoc.send_n_create(dataset, ModalityPerformedProcedureStep, body["sop_instance_uid"])
        else:
            status, _ = assoc.send_n_set(dataset, ModalityPerformedProcedureStep, body["sop_instance_uid"])
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        raise outbox.DeliveryError(f"no {body['operation']} response from {peer.ae_title}")
    # A repeated N-CREATE (at-least-once delivery) finds the instance already there.
    if code == 0x0000 or (code == STATUS_DUPLICATE_SOP_INSTANCE and body["operation"] == N_CREATE):
        return
    comment = getattr(status, "ErrorComment", "") or ""
    raise outbox.DeliveryError(
        f"{peer.ae_title} answered {body['operation']} with 0x{code:04X} {comment}".strip(),
        retry=(code & 0xFF00) == 0xA700,
    )


def register() -> None:
    """Make the outbox deliver (and its sweep find) "mpps" rows with send()."""
    outbox.CHANNELS.setdefault(DESTINATION, "mpps")
    outbox.register_sender(DESTINATION, send)
