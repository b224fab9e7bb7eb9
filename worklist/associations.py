"""The DICOM association log (issue 7 §9): one AssociationLog row per association with the SCP,
for the interfaces page. A service of worklist.scp.SERVICES like the others, but it only
watches: its handlers never change the association policy (worklist.scp) or any answer.

PS3.8 §7.1 vocabulary: an association is accepted and then released or aborted, or refused with
an A-ASSOCIATE-RJ (result source and diagnostic, PS3.8 Table 9-21). The services it used are
counted from each DIMSE request received (EVT_DIMSE_RECV), e.g. {"C-FIND MWL": 3}. The row is
written once, when the association ends (after the release response went out), so the log adds
one INSERT per association and nothing to any DIMSE round trip. Every PRUNE_EVERY-th row also
deletes the rows older than RIS_DICOM_ASSOCIATION_LOG_DAYS.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone
from pynetdicom import AE, evt
from pynetdicom.association import Association

from worklist.models import AssociationLog, AssociationOutcome

log = logging.getLogger(__name__)

# Short names of the SOP classes the SCP serves; others are shown by their UID.
SOP_CLASS_NAMES = {
    "1.2.840.10008.1.1": "",  # Verification: "C-ECHO" says it all
    "1.2.840.10008.5.1.4.31": "MWL",
    "1.2.840.10008.3.1.2.3.3": "MPPS",
    "1.2.840.10008.5.1.4.33": "IAN",
}
# A-ASSOCIATE-RJ (result source, diagnostic) → reason, PS3.8 Table 9-21.
REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized",
    (1, 7): "called AE title not recognized",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded (too many associations)",
}
_STATE = "_ris_association_log"
PRUNE_EVERY = 500


def register(ae: AE) -> list[tuple]:
    """Handlers only; bound after worklist.scp's, so a refusal by its policy is seen here."""
    return [
        (evt.EVT_REQUESTED, on_requested),
        (evt.EVT_REJECTED, on_rejected),
        (evt.EVT_DIMSE_RECV, on_dimse_received),
        (evt.EVT_RELEASED, on_released),
        (evt.EVT_ABORTED, on_aborted),
    ]


def _state(assoc: Association) -> dict:
    state = getattr(assoc, _STATE, None)
    if state is None:
        state = {"started_at": timezone.now(), "services": Counter(), "written": False}
        setattr(assoc, _STATE, state)
    return state


def service_name(message) -> str:
    """'C-FIND MWL', 'N-SET MPPS', 'C-STORE', ... for a DIMSE request."""
    command = type(message).__name__.removesuffix("_RQ").replace("_", "-")
    if command == "C-STORE":
        return command
    commands = message.command_set
    uid = str(commands.get("AffectedSOPClassUID", "") or commands.get("RequestedSOPClassUID", ""))
    name = SOP_CLASS_NAMES.get(uid, uid)
    return f"{command} {name}".strip()


def on_requested(event: evt.Event) -> None:
    state = _state(event.assoc)
    if event.assoc.is_rejected:  # worklist.scp's policy refused it
        _write(event.assoc, state, AssociationOutcome.REFUSED, _reject_reason(event.assoc))


def on_rejected(event: evt.Event) -> None:
    _write(event.assoc, _state(event.assoc), AssociationOutcome.REFUSED, _reject_reason(event.assoc))


def on_dimse_received(event: evt.Event) -> None:
    if type(event.message).__name__.endswith("_RQ"):
        try:
            _state(event.assoc)["services"][service_name(event.message)] += 1
        except Exception:  # a log must never disturb the service
            log.debug("could not name a DIMSE request", exc_info=True)


def on_released(event: evt.Event) -> None:
    _write(event.assoc, _state(event.assoc), AssociationOutcome.RELEASED, "")


def on_aborted(event: evt.Event) -> None:
    state = _state(event.assoc)
    reason = "aborted" if event.assoc.acceptor.primitive is not None else "aborted during negotiation"
    _write(event.assoc, state, AssociationOutcome.ABORTED, reason)


def _reject_reason(assoc: Association) -> str:
    primitive = assoc.acceptor.primitive
    key = (getattr(primitive, "result_source", None), getattr(primitive, "diagnostic", None))
    return REJECT_REASONS.get(key, "refused")


def _write(assoc: Association, state: dict, outcome: str, reason: str) -> None:
    if state["written"]:
        return
    state["written"] = True
    requestor = assoc.requestor
    primitive = requestor.primitive
    close_old_connections()
    try:
        row = AssociationLog.objects.create(
            calling_ae_title=(primitive.calling_ae_title if primitive else "").strip()[:16],
            called_ae_title=(primitive.called_ae_title if primitive else "").strip()[:16],
            address=f"{requestor.address}:{requestor.port}"[:64],
            outcome=outcome,
            reason=reason[:200],
            services=dict(state["services"]),
            started_at=state["started_at"],
            ended_at=timezone.now(),
        )
        if row.pk % PRUNE_EVERY == 0:
            prune()
    except Exception:  # the association is over; losing its log line must not crash the thread
        log.exception("could not log the association from %s", requestor.address)
    finally:
        connection.close()  # the association's thread ends here (as worklist.storage does)


def prune() -> int:
    """Delete the rows older than RIS_DICOM_ASSOCIATION_LOG_DAYS; returns how many."""
    cutoff = timezone.now() - dt.timedelta(days=settings.RIS_DICOM_ASSOCIATION_LOG_DAYS)
    return AssociationLog.objects.filter(started_at__lt=cutoff).delete()[0]
