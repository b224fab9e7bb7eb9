"""The MLLP listener (HL7 v2 MLLP release 1): one thread per connection, many messages per
connection, answered in order on the connection they came on.

Why threads and not asyncio: every message ends in a synchronous Django ORM transaction that
must commit before the ACK (commit-before-ACK), and one connection's messages are strictly
sequential, so an event loop would only add a hop to a thread pool per message. bench/bench_mllp.py
measures this listener against a do-nothing MLLP echo server as the floor.

What a peer can do and what happens:
- many frames in one read, a frame split over many reads: handled by hl7.mllp.FrameReader;
- bytes outside a frame, a frame cut off by the peer closing, a frame over
  RIS_MLLP_MAX_FRAME_BYTES: journaled (first 64 KiB) with the reason; an oversized frame closes
  the connection (its end cannot be found reliably);
- silence between frames longer than RIS_MLLP_IDLE_TIMEOUT, or a frame not finished within
  RIS_MLLP_FRAME_TIMEOUT (slow sender): the connection is closed;
- more than RIS_MLLP_MAX_CONNECTIONS open at once, or an address outside RIS_MLLP_ALLOWED_PEERS:
  closed at once;
- optional TLS (RIS_MLLP_TLS_CERT + RIS_MLLP_TLS_KEY), handshake in the connection's thread.
Nothing a peer sends stops the listener or holds up other connections.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import os
import signal
import socket
import socketserver
import ssl
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connection, connections

from hl7.inbound import handle_frame, journal_unanswered
from hl7.mllp import FrameReader, FrameTooLarge, frame

log = logging.getLogger(__name__)

RECV_BYTES = 65536


class MLLPHandler(socketserver.BaseRequestHandler):
    server: MLLPServer

    def handle(self) -> None:
        peer = "{}:{}".format(*self.client_address[:2])
        sock: socket.socket = self.request
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.server.tls is not None:
                sock.settimeout(self.server.frame_timeout)
                sock = self.server.tls.wrap_socket(sock, server_side=True)
            self.serve_connection(sock, peer)
        except (OSError, ssl.SSLError) as exc:
            log.info("connection from %s ended: %s", peer, exc)
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            self.server.release()
            close_old_connections()
            connection.close()

    def serve_connection(self, sock: socket.socket, peer: str) -> None:
        reader = FrameReader(self.server.max_frame_bytes)
        frame_started = 0.0
        while True:
            sock.settimeout(self._timeout(reader, frame_started))
            try:
                data = sock.recv(RECV_BYTES)
            except TimeoutError:
                if reader.pending:
                    journal_unanswered(bytes(reader.buffer), peer, "frame not finished in time (slow sender)")
                log.info("closing %s connection from %s", "slow" if reader.pending else "idle", peer)
                return
            if not data:
                if reader.pending:
                    journal_unanswered(bytes(reader.buffer), peer, "connection closed inside a frame")
                return
            was_pending = reader.pending
            try:
                frames = reader.feed(data)
            except FrameTooLarge as exc:
                journal_unanswered(exc.head, peer, str(exc))
                log.warning("closing %s: %s", peer, exc)
                return
            if reader.discarded:
                journal_unanswered(reader.take_discarded(), peer, "bytes outside an MLLP frame")
            for raw in frames:
                sock.sendall(frame(handle_frame(raw, peer)))
            if reader.pending and (not was_pending or frames):
                frame_started = time.monotonic()

    def _timeout(self, reader: FrameReader, frame_started: float) -> float:
        if not reader.pending:
            return self.server.idle_timeout
        return max(0.05, self.server.frame_timeout - (time.monotonic() - frame_started))


class MLLPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # Several listener processes (RIS_MLLP_PROCESSES, or several `runmllp`) may share the port;
    # the kernel spreads new connections over them.
    allow_reuse_port = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int]) -> None:
        self.max_frame_bytes = settings.RIS_MLLP_MAX_FRAME_BYTES
        self.idle_timeout = float(settings.RIS_MLLP_IDLE_TIMEOUT)
        self.frame_timeout = float(settings.RIS_MLLP_FRAME_TIMEOUT)
        self.allowed = [ipaddress.ip_network(p, strict=False) for p in settings.RIS_MLLP_ALLOWED_PEERS]
        self.tls = tls_context()
        self.slots = threading.BoundedSemaphore(settings.RIS_MLLP_MAX_CONNECTIONS)
        super().__init__(address, MLLPHandler)

    def verify_request(self, request, client_address) -> bool:
        if self.allowed and not any(ipaddress.ip_address(client_address[0]) in n for n in self.allowed):
            log.warning("refused MLLP connection from %s (not in RIS_MLLP_ALLOWED_PEERS)", client_address[0])
            return False
        if not self.slots.acquire(blocking=False):
            log.warning("refused MLLP connection from %s: RIS_MLLP_MAX_CONNECTIONS reached", client_address[0])
            return False
        return True

    def release(self) -> None:
        self.slots.release()


def tls_context() -> ssl.SSLContext | None:
    if not (settings.RIS_MLLP_TLS_CERT and settings.RIS_MLLP_TLS_KEY):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.RIS_MLLP_TLS_CERT, settings.RIS_MLLP_TLS_KEY)
    return context


def serve(stop: threading.Event | None = None, processes: int | None = None) -> None:
    """Run the listener until `stop` is set (or forever), in `processes` processes
    (RIS_MLLP_PROCESSES) that share the port."""
    processes = processes or settings.RIS_MLLP_PROCESSES
    # Start-up objects (Django, models, hl7apy tables) live as long as the process: keep them out
    # of the cyclic collector's full scans, which otherwise cost ~15% of a message's CPU
    # (bench/bench_mllp.py); forked listener processes share them copy-on-write.
    gc.freeze()
    if processes > 1:
        serve_processes(stop or threading.Event(), processes)
        return
    server = MLLPServer((settings.RIS_BIND, settings.RIS_MLLP_PORT))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True)
    thread.start()
    log.info("MLLP listener on %s:%s%s", settings.RIS_BIND, settings.RIS_MLLP_PORT, " (TLS)" if server.tls else "")
    try:
        (stop or threading.Event()).wait()
    finally:
        server.shutdown()
        server.server_close()
        log.info("MLLP listener stopped")


def serve_processes(stop: threading.Event, processes: int) -> None:
    """Pre-fork: each process runs its own listener on the shared port (SO_REUSEPORT). The
    ORM work of a message holds the GIL, so threads share one core; processes use them all.
    Each child inherits the command's SIGTERM/SIGINT handler, which sets its own copy of `stop`."""
    connections.close_all()  # children open their own database connections
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                serve(stop, processes=1)
            except BaseException:
                log.exception("MLLP listener process failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    log.info("MLLP listener running in %d processes: %s", processes, children)
    try:
        stop.wait()
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
