"""`manage.py rundicom`: the DICOM SCP alone (contract: AE RIS_AE_TITLE on RIS_BIND:RIS_DICOM_PORT)."""

import signal
import threading

from django.core.management.base import BaseCommand

from worklist.scp import serve


class Command(BaseCommand):
    help = "Run the DICOM SCP (Verification; MWL, MPPS, Storage, IAN as they are enabled) until SIGINT/SIGTERM."

    def handle(self, *args, **options) -> None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        serve(stop)
