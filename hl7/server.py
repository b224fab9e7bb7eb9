"""The MLLP listener: one thread per connection, many messages per connection.

Each frame is answered on the connection it came on, in order, after its effects are
committed (hl7.inbound.handle_frame). A connection that sends an oversized frame or
stays idle past the timeout is closed; nothing a peer sends stops the listener.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading

from django.conf import settings
from django.db import close_old_connections

from hl7.inbound import handle_frame
from hl7.mllp import FrameReader, FrameTooLarge, frame

log = logging.getLogger(__name__)


class MLLPHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(settings.RIS_MLLP_IDLE_TIMEOUT)
        peer = "{}:{}".format(*self.client_address[:2])
        reader = FrameReader(settings.RIS_MLLP_MAX_FRAME_BYTES)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                for raw in reader.feed(data):
                    sock.sendall(frame(handle_frame(raw, peer)))
        except FrameTooLarge as exc:
            log.warning("closing %s: %s", peer, exc)
        except TimeoutError:
            log.info("closing idle connection from %s", peer)
        except OSError as exc:
            log.info("connection from %s ended: %s", peer, exc)
        finally:
            close_old_connections()


class MLLPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def serve(stop: threading.Event | None = None) -> None:
    """Run the listener until `stop` is set (or forever)."""
    server = MLLPServer((settings.RIS_BIND, settings.RIS_MLLP_PORT), MLLPHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True)
    thread.start()
    log.info("MLLP listener on %s:%s", settings.RIS_BIND, settings.RIS_MLLP_PORT)
    try:
        (stop or threading.Event()).wait()
    finally:
        server.shutdown()
        server.server_close()
        log.info("MLLP listener stopped")
