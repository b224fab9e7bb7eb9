"""`manage.py runmllp`: the HL7 MLLP listener alone (contract: RIS_BIND:RIS_MLLP_PORT)."""

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from hl7.server import serve


class Command(BaseCommand):
    help = (
        "Run the inbound HL7 v2 MLLP listener on RIS_BIND:RIS_MLLP_PORT until SIGINT/SIGTERM: ADT, ORM^O01 and "
        "OMI^O23 in, one acknowledgment per message after commit (docs/conformance/hl7.md). Settings: "
        "RIS_MLLP_MAX_FRAME_BYTES, RIS_MLLP_IDLE_TIMEOUT, RIS_MLLP_FRAME_TIMEOUT, RIS_MLLP_MAX_CONNECTIONS, "
        "RIS_MLLP_ALLOWED_PEERS, RIS_MLLP_TLS_CERT/RIS_MLLP_TLS_KEY, RIS_HL7_DEFAULT_CHARSET, RIS_MLLP_PROCESSES."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--processes",
            type=int,
            default=None,
            help=f"listener processes sharing the port (default RIS_MLLP_PROCESSES, {settings.RIS_MLLP_PROCESSES})",
        )

    def handle(self, *args, **options) -> None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        serve(stop, processes=options["processes"])
