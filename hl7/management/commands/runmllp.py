"""`manage.py runmllp`: the HL7 MLLP listener alone (contract: RIS_BIND:RIS_MLLP_PORT)."""

import signal
import threading

from django.core.management.base import BaseCommand

from hl7.server import serve


class Command(BaseCommand):
    help = "Run the inbound HL7 v2 MLLP listener on RIS_BIND:RIS_MLLP_PORT until SIGINT/SIGTERM."

    def handle(self, *args, **options) -> None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        serve(stop)
