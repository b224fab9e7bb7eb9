"""Event-driven reactors for pynetdicom's associations (issue 5: C-STORE ingest speed).

pynetdicom 3.0.4 runs two polling loops per association: the DUL thread sleeps 1 ms whenever a
loop found nothing to do, and the acceptor's association thread sleeps 1 ms on every loop (the
project's own TODO: "try and make this event based rather than running loops"). A modality that
sends one instance and waits for its response pays up to three such sleeps per instance: the PDU
waits for the DUL to look at the socket, the decoded request for the association thread, the
response for the DUL again: storescu → rundicom ran at 263 instances/s (3.8 ms each) here.

`install()` makes both loops wait on what they are waiting for:
- the DUL blocks in select() on its socket and a wake-up socket pair, written whenever another
  thread queues a primitive or an event for it or asks it to stop;
- the association thread blocks on a threading.Event set whenever a DIMSE message is complete,
  a primitive reaches its user queue, the DUL ends, the association is killed or a local
  request asks it to pause.
Both still wake every POLL_SECONDS to check their timers (ARTIM, network idle timeout), as the
stock loops do on every pass. That alone: 372 instances/s. The DUL's wake-ups from its own
thread are a flag, not a write to the socket pair, and it reads a PDU in one recv() rather than
in pynetdicom's 4096-byte pieces: 53 system calls an instance became about 43 (strace -c).
An association's teardown polls for its DUL's end every 1 ms instead of 10. The SCP
(`worklist.scp.serve`) and the worker's forwarders (worklist/forward.py,
worklist/mpps_forward.py) install them; a forwarded instance, one association each, went from
15-17 to 4-5 ms.

And a C-STORE request an acceptor receives is served on the DUL thread that decoded it, instead of
being handed to the association thread and its response handed back (two thread wake-ups and GIL
hand-overs: 430-470 instances/s). Nothing is lost by it: a storage SCU has one request
outstanding (no asynchronous operations window is negotiated) and C-STORE has no C-CANCEL for
the DUL to watch for meanwhile. Other requests (C-FIND, which can be cancelled; N-CREATE/N-SET)
still go to the association thread. Handlers of EVT_C_STORE therefore run on the DUL thread; its
Django database connections are closed when it ends.

On that path the C-STORE-RQ's command set is also read, and the C-STORE-RSP's written, straight
from their bytes and primitive (worklist.datasets), not through the pydicom Datasets pynetdicom
builds for them (~0.2 ms of each instance); outside the plain case pynetdicom's code runs.

Everything else, state machine included, is pynetdicom's own: the loops below are the stock ones
with the sleeps replaced, so they are tied to the version checked.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable

import pynetdicom
from django.db import connections
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from worklist.datasets import decode_c_store_request, encode_c_store_response

log = logging.getLogger(__name__)

# The loops below copy pynetdicom's at this version; another version keeps its stock reactors.
PYNETDICOM_VERSION = "3.0.4"
# How long a reactor with nothing to do sleeps before checking its timers again.
POLL_SECONDS = 0.05
# The most one read from an association's socket asks for (pynetdicom reads 4096 at a time).
READ_CHUNK_BYTES = 256 * 1024


class WakingQueue(queue.Queue):
    """A queue that calls `wake` after every put, so its reader can block on something else."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class Wakeup:
    """A socket pair a select() can wait on; `set()` from any thread makes it readable. The DUL
    thread's own puts (an event for a PDU it read, a C-STORE response it served) only raise a
    flag: it looks at its queues before it waits, and a wake-up through the kernel cost it four
    send/select/recv round trips an instance."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        self.owner: int | None = None  # the thread that waits on it, once it runs
        self.pending = False

    def set(self) -> None:
        if threading.get_ident() == self.owner:
            self.pending = True
            return
        with contextlib.suppress(OSError):  # full (it is readable already) or closed (the reactor ended)
            self.writer.send(b"\0")

    def clear(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


class Checkpoint(threading.Event):
    """Association._reactor_checkpoint. A local request (send_c_store, release, ...) clears it and
    then waits until the reactor has paused there; clearing it wakes the reactor so that happens
    at once instead of after its wait (the stock loop got there within its 1 ms sleep)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def clear(self) -> None:
        super().clear()
        self._wake()


class DimseMessages(WakingQueue):
    """An association's queue of complete DIMSE messages (put by its DUL thread): wakes the
    association thread, except for a C-STORE request to an acceptor, served there and then."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc._wakeup.set)
        self.assoc = assoc

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        context_id, message = item
        if isinstance(message, C_STORE) and self._serves_inline():
            assoc = self.assoc
            assoc.abort = assoc._abort_nonblocking  # a blocking abort would wait for this thread
            try:
                assoc._serve_request(message, context_id)
            except Exception:  # as the stock reactor would end: the association is aborted
                log.exception("C-STORE request could not be served; association aborted")
                assoc.dul.event_queue.put("Evt19")
            finally:
                assoc.abort = assoc._abort_blocking
            return
        super().put(item, block, timeout)

    def _serves_inline(self) -> bool:
        assoc = self.assoc
        return (
            assoc.is_acceptor
            and assoc.is_established
            and assoc._reactor_checkpoint.is_set()  # not paused for a request of our own
            and threading.get_ident() == assoc.dul.ident
        )


# --- DUL --------------------------------------------------------------------------------------


def _wait_for_transport(dul: DULServiceProvider, timeout: float) -> None:
    """Block until the peer sent something, another thread woke the DUL, or `timeout`."""
    wakeup = dul._wakeup
    if wakeup.pending:
        wakeup.pending = False
        return
    readers: list = [wakeup.reader]
    transport = dul.socket
    sock = transport.socket if transport is not None and transport._is_connected else None
    if sock is not None:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes select() cannot see (pynetdicom #528)
        readers.append(sock)
    try:
        ready, _, _ = select.select(readers, [], [], timeout)
    except (OSError, ValueError):  # the socket closed under us: its next check reports it
        ready, _, _ = select.select([wakeup.reader], [], [], timeout)
    if wakeup.reader in ready:
        wakeup.clear()


# Incoming first: pynetdicom reads the socket only when it has nothing to send. With these
# loops a C-CANCEL sent after the first of 1,500 MWL matches was read only after the last one in
# 1 run of 3 (tests/test_mwl_scp.py; never with the stock loops), so a waiting PDU is read before
# anything more is sent. One readiness check per loop, as pynetdicom's; Sta13 keeps its order.


def run_dul_reactor(self: DULServiceProvider) -> None:
    """pynetdicom 3.0.4's DULServiceProvider.run_reactor, waiting instead of sleeping 1 ms."""
    self._idle_timer.start()
    self._wakeup.owner = threading.get_ident()
    idle = False
    try:
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                _wait_for_transport(self, POLL_SECONDS)
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self.state_machine.current_state == "Sta13":  # closing: pynetdicom's order and check
                    if not self._process_recv_primitive() and self._is_transport_event():
                        self._idle_timer.restart()
                elif self.socket is not None and self.socket.ready:  # incoming first: see the note above
                    self._read_pdu_data()
                    self._idle_timer.restart()
                else:
                    self._process_recv_primitive()
            except Exception as exc:
                log.error("Exception in DUL.run(), aborting association")
                log.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False
    finally:
        self._wakeup.close()
        self.assoc._wakeup.set()  # the association sees the DUL has ended at once
        connections.close_all()  # this thread's, opened by the C-STORE handlers it ran


def receive_bytes(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """AssociationSocket.recv in reads of up to READ_CHUNK_BYTES rather than 4096: a 12 KB
    instance's PDU took four recv calls, each after a poll (the socket has a timeout). Bounded,
    so a PDU header announcing gigabytes costs only what actually arrives."""
    sock = self.socket
    bytestream = bytearray()
    while len(bytestream) < nr_bytes:
        chunk = sock.recv(min(nr_bytes - len(bytestream), READ_CHUNK_BYTES))
        if not chunk:  # the connection was broken: what was read, as pynetdicom's
            break
        bytestream += chunk
    return bytestream


def kill_dul(self: DULServiceProvider) -> None:
    self._kill_thread = True
    self._wakeup.set()


def stop_dul(self: DULServiceProvider) -> bool:
    """Stop the reactor if the state machine is idle (Sta1); woken, not waited out."""
    if self.state_machine.current_state != "Sta1":
        return False
    kill_dul(self)
    if self.is_alive() and threading.current_thread() is not self:
        self.join()
    return True


# --- Association ------------------------------------------------------------------------------


def run_association_reactor(self: Association) -> None:
    """pynetdicom 3.0.4's Association._run_reactor (the acceptor loop), waiting on `_wakeup`
    instead of sleeping 1 ms a loop. The event is cleared before the queues are read, so a put
    that lands after the reads leaves it set and the next wait returns at once."""
    self._is_paused = False
    idle = False
    while not self._kill:
        if idle:
            self._wakeup.wait(POLL_SECONDS)
        self._wakeup.clear()
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False

        context_id, msg = self.dimse.get_msg(block=False)
        idle = msg is None
        if msg:
            self._serve_request(msg, context_id)

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            log.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            log.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            log.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


def init_association(self: Association, *args, **kwargs) -> None:
    """Association.__init__, then the wake-ups: every queue a reactor reads wakes it."""
    STOCK["Association.__init__"](self, *args, **kwargs)
    self._wakeup = threading.Event()
    self._reactor_checkpoint = Checkpoint(self._wakeup.set)
    self._reactor_checkpoint.set()
    dul = self.dul
    dul._wakeup = Wakeup()
    dul.event_queue = WakingQueue(dul._wakeup.set)
    dul.to_provider_queue = WakingQueue(dul._wakeup.set)
    dul.to_user_queue = WakingQueue(self._wakeup.set)
    self.dimse.msg_queue = DimseMessages(self)


def message_to_primitive(self: DIMSEMessage):
    """DIMSEMessage.message_to_primitive, a plain C-STORE-RQ's command set read straight from its
    bytes (worklist.datasets.decode_c_store_request) rather than from the pydicom Dataset decoded
    from them; the primitive's own setters still check every value."""
    fields = decode_c_store_request(self.encoded_command_set.getvalue()) if type(self) is C_STORE_RQ else None
    if fields is None:
        return STOCK["DIMSEMessage.message_to_primitive"](self)
    primitive = C_STORE()
    for attribute, value in fields.items():
        setattr(primitive, attribute, value)
    primitive.DataSet = self.data_set
    primitive._context_id = self.context_id
    primitive._dataset_path = self._data_set_path
    primitive._dataset_file = self._data_set_file
    return primitive


def send_dimse_message(self: DIMSEServiceProvider, primitive, context_id: int) -> None:
    """DIMSEServiceProvider.send_msg, a C-STORE-RSP encoded straight from its primitive: pynetdicom
    builds a DIMSEMessage and a pydicom Dataset for it, ~150 µs of each instance stored. Only
    when no EVT_DIMSE_SENT handler wants the message object and the command set fits one PDU;
    anything else goes through pynetdicom."""
    c_store_response = type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None
    if c_store_response and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
        try:
            command_set = encode_c_store_response(primitive)
        except ValueError:
            command_set = b""
        max_pdu = self.maximum_pdu_size
        if command_set and (max_pdu == 0 or len(command_set) + 6 <= max_pdu):
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, b"\x03" + command_set))  # last command fragment
            self.dul.send_pdu(pdata)
            return
    STOCK["DIMSEServiceProvider.send_msg"](self, primitive, context_id)


def kill_association(self: Association) -> None:
    """Association.kill, polling for the DUL's end every 1 ms instead of 10 (an association's
    teardown waited up to 10 ms more: a slot held, a forwarded instance slower)."""
    self._reactor_checkpoint.set()
    self._kill = True
    self.is_established = False
    self._is_paused = True
    self._wakeup.set()
    while self.dul.is_alive() and not self.dul.stop_dul():
        time.sleep(0.001)


# (class, attribute, replacement); STOCK keeps what each replaced, as "Class.attribute".
_REPLACEMENTS = [
    (Association, "__init__", init_association),
    (Association, "_run_reactor", run_association_reactor),
    (Association, "kill", kill_association),
    (DULServiceProvider, "run_reactor", run_dul_reactor),
    (DULServiceProvider, "kill_dul", kill_dul),
    (DULServiceProvider, "stop_dul", stop_dul),
    (AssociationSocket, "recv", receive_bytes),
    (DIMSEServiceProvider, "send_msg", send_dimse_message),
    (DIMSEMessage, "message_to_primitive", message_to_primitive),
]
STOCK: dict[str, Callable] = {}
_install_lock = threading.Lock()


def install() -> bool:
    """Replace the polling reactors (idempotent). Returns whether they are now event-driven."""
    with _install_lock:
        if STOCK:
            return True
        if pynetdicom.__version__ != PYNETDICOM_VERSION:
            log.warning(
                "pynetdicom %s is not %s: keeping its polling reactors and codecs (≈2 ms more per DIMSE exchange)",
                pynetdicom.__version__,
                PYNETDICOM_VERSION,
            )
            return False
        for owner, name, replacement in _REPLACEMENTS:
            STOCK[f"{owner.__name__}.{name}"] = getattr(owner, name)
            setattr(owner, name, replacement)
        return True
