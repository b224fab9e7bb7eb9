"""RFC 5424 syslog copies of audit events (issue 9): RIS_AUDIT_SYSLOG=host:port (UDP, RFC 5426).
Each AuditEvent becomes one message, facility authpriv (10), severity notice (5) or warning (4)
for failures, MSGID the action, with the event as structured data and JSON."""

from __future__ import annotations

import json
import logging
import os
import socket

from django.conf import settings

log = logging.getLogger(__name__)
FACILITY_AUTHPRIV = 10
SEVERITY_WARNING, SEVERITY_NOTICE = 4, 5
ENTERPRISE_ID = "32473"  # RFC 5612 documentation number: SD-ID name@32473


def _sd_value(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def rfc5424(event) -> bytes:
    severity = SEVERITY_NOTICE if event.outcome == "success" else SEVERITY_WARNING
    pri = FACILITY_AUTHPRIV * 8 + severity
    params = {
        "actorKind": event.actor_kind,
        "actor": event.actor,
        "source": event.source_address,
        "outcome": event.outcome,
        "exam": event.requested_procedure_id or "",
        "patient": event.patient_id or "",
    }
    sd = "[ris@" + ENTERPRISE_ID + "".join(f' {k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    timestamp = event.at.isoformat(timespec="microseconds").replace("+00:00", "Z")
    msgid = event.action[:32].replace(" ", "_")
    body = json.dumps({"id": event.pk, "action": event.action, "detail": event.detail}, default=str)
    header = f"<{pri}>1 {timestamp} {socket.gethostname()[:255]} ris {os.getpid()} {msgid} {sd} "
    return header.encode() + b"\xef\xbb\xbf" + body.encode()  # BOM: the MSG is UTF-8 (RFC 5424 6.4)


def destination() -> tuple[str, int]:
    host, _, port = settings.RIS_AUDIT_SYSLOG.rpartition(":")
    return host, int(port)


def forward(sender, instance, created: bool, **_kw) -> None:
    if not created:
        return
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(rfc5424(instance), destination())
    except OSError:  # the database row is the record; syslog is a copy
        log.warning("audit event %s not sent to syslog %s", instance.pk, settings.RIS_AUDIT_SYSLOG, exc_info=True)
