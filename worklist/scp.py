"""The RIS's DICOM application entity (contract: AE RIS_AE_TITLE on RIS_DICOM_PORT).

This module owns the association policy: a calling AE title must belong to a registered,
enabled Modality (unless RIS_DICOM_ALLOW_ANY_AE=1), else the association is rejected with
"calling AE title not recognised" (PS3.8 9.3.4). Each DICOM service lives in its own module,
listed in SERVICES, with a `register(ae) -> handlers` function that adds its presentation
contexts and returns its (event, handler) pairs.
"""

from __future__ import annotations

import importlib
import logging
import socket
import ssl
import threading

from django.conf import settings
from django.db import close_old_connections
from pynetdicom import AE, evt, fsm
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import (
    InstanceAvailabilityNotification,
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    Verification,
    uid_to_service_class,
)
from pynetdicom.transport import AssociationServer

from worklist import reactor
from worklist.models import Modality

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: rejected-permanent, DUL service-user, calling AE title not recognised.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)


# --- robustness against malformed DIMSE commands (issue 9) ---
# pynetdicom 3.0.4 decodes P-DATA inside the state machine, outside the reactor's try: a command
# set without CommandField raises there, kills the association's reactor thread and leaves the
# association counted against maximum_associations until network_timeout (found by
# tests/test_fuzz_dicom.py: 32 such PDUs refused every later association). Treat it as the
# invalid PDU it is (Evt19: A-ABORT and close), as pynetdicom already does for invalid messages.
_receive_primitive = DIMSEServiceProvider.receive_primitive


def _receive_primitive_or_abort(self: DIMSEServiceProvider, primitive) -> None:
    try:
        _receive_primitive(self, primitive)
    except Exception:
        log.warning("undecodable DIMSE message: association aborted", exc_info=True)
        self.message = None
        self.dul.event_queue.put("Evt19")


DIMSEServiceProvider.receive_primitive = _receive_primitive_or_abort


# --- requests on the wrong presentation context (issue 9) ---
# pynetdicom 3.0.4 picks the service from the SOP class the request names, not from the context
# it came on: a C-FIND naming MPPS on the MWL context was aborted, an N-SET on a storage context
# answered with a C-STORE-RSP, an N-CREATE on the Verification context with a C-ECHO-RSP, an
# N-GET of an MPPS 0x0110 with no comment (found by tests/test_fuzz_dicom.py). Each request is
# checked against its context first and refused with the status PS3.7 defines.
OPERATIONS: dict[str, tuple[str, ...]] = {
    Verification: ("C-ECHO",),
    ModalityWorklistInformationFind: ("C-FIND",),
    ModalityPerformedProcedureStep: ("N-CREATE", "N-SET"),
    InstanceAvailabilityNotification: ("N-CREATE",),
}
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122  # C-services
STATUS_NO_SUCH_SOP_CLASS = 0x0118  # N-services: a class not negotiated on this association
STATUS_UNRECOGNIZED_OPERATION = 0x0211  # N-services: not an operation of the context's class
STATUS_MISTYPED_ARGUMENT = 0x0212  # N-services: a class negotiated on another context


def offered_operations(abstract_syntax: str) -> tuple[str, ...]:
    if abstract_syntax in OPERATIONS:
        return OPERATIONS[abstract_syntax]
    return ("C-STORE",) if uid_to_service_class(abstract_syntax) is StorageServiceClass else ()


def misdirected(assoc: Association, msg, context) -> tuple[int, str] | None:
    """(status, Error Comment) refusing a request its presentation context does not carry."""
    kind = msg.msg_type
    sop_class = getattr(msg, "AffectedSOPClassUID", None) or getattr(msg, "RequestedSOPClassUID", None)
    on_context = sop_class == context.abstract_syntax
    if on_context and kind in offered_operations(context.abstract_syntax):
        return None
    if kind.startswith("C-"):
        where = "by this SOP Class" if on_context else f"on presentation context {context.context_id}"
        return STATUS_SOP_CLASS_NOT_SUPPORTED, f"{kind} not supported {where}"
    if on_context:
        return STATUS_UNRECOGNIZED_OPERATION, f"{kind} is not an operation of this SOP Class"
    if any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts):
        return STATUS_MISTYPED_ARGUMENT, f"SOP Class not negotiated on presentation context {context.context_id}"
    return STATUS_NO_SUCH_SOP_CLASS, "SOP Class not negotiated on this association"


def refuse(assoc: Association, msg, context_id: int, status: int, comment: str) -> None:
    rsp = type(msg)()
    rsp.MessageIDBeingRespondedTo = msg.MessageID
    rsp.Status, rsp.ErrorComment = status, comment
    rsp.AffectedSOPClassUID = getattr(msg, "AffectedSOPClassUID", None) or getattr(msg, "RequestedSOPClassUID", None)
    instance = getattr(msg, "AffectedSOPInstanceUID", None) or getattr(msg, "RequestedSOPInstanceUID", None)
    if hasattr(rsp, "AffectedSOPInstanceUID"):
        rsp.AffectedSOPInstanceUID = instance
    assoc.dimse.send_msg(rsp, context_id)


_serve_request = Association._serve_request


def _serve_request_on_its_context(self: Association, msg, context_id: int) -> None:
    context = self._accepted_cx.get(context_id)
    if self.is_acceptor and msg.MessageIDBeingRespondedTo is None and not msg.is_valid_request:
        # A request without a mandatory command element (an N-SET with no Requested SOP Instance
        # UID): pynetdicom dropped it and the modality waited for an answer that never came.
        log.warning("%s without a mandatory command element: association aborted", msg.msg_type)
        self.abort()
        return None
    refusal = None
    if self.is_acceptor and context is not None and msg.is_valid_request and not self._sent_release:
        refusal = misdirected(self, msg, context)
    if refusal is None:
        return _serve_request(self, msg, context_id)  # pynetdicom aborts on an unknown context ID
    calling = self.requestor.primitive.calling_ae_title.strip() if self.requestor.primitive else "?"
    log.warning(
        "%s from %s naming %s on context %s (%s) refused: 0x%04X %s",
        msg.msg_type,
        calling,
        getattr(msg, "AffectedSOPClassUID", None) or getattr(msg, "RequestedSOPClassUID", None),
        context_id,
        context.abstract_syntax,
        *refusal,
    )
    refuse(self, msg, context_id, *refusal)


Association._serve_request = _serve_request_on_its_context


# --- association slots under malformed connections (issue 9) ---
# pynetdicom counts an acceptor thread against maximum_associations from the TCP connect until the
# thread ends. Until an A-ASSOCIATE-RQ arrives that thread waits on its DUL for up to acse_timeout
# and only an RQ wakes it: a connection that sent an invalid PDU (AA-1) or an A-ABORT (AA-2) was
# closed at once yet held its slot for acse_timeout, and an RQ that decodes but cannot be read
# (an even presentation context ID, a UID that is not ASCII) raised inside the state machine,
# killed the DUL thread and left the connection open and unanswered as long. A burst of either
# filled the slots and valid associations got A-ASSOCIATE-RJ "local limit exceeded" (found by
# tests/test_fuzz_dicom.py). Such a request is now aborted (A-ABORT, service-provider, invalid
# PDU parameter value), and whenever the DUL leaves Sta2 other than with an RQ the acceptor thread
# is woken to close the connection and free its slot. (FSM actions are wrapped, as worklist/mwl.py
# does for AA-5, rather than an EVT_FSM_TRANSITION handler that would run on every PDU.)
def _leaving_sta2(dul) -> bool:
    return dul.assoc.is_acceptor and dul.state_machine.current_state == "Sta2"


def _wake_acceptor(dul) -> None:
    dul.to_user_queue.put(None)  # read by the acceptor as "no A-ASSOCIATE-RQ": it ends


def _read_associate_rq_or_abort(dul) -> str:
    """AE-6 (Sta2 + Evt6): an A-ASSOCIATE-RQ pynetdicom cannot turn into a primitive is aborted;
    once a request is in, the socket takes the network timeout (see handle_open)."""
    try:
        next_state = PYNETDICOM_ACTIONS["AE-6"](dul)
    except Exception as exc:
        log.warning("unreadable A-ASSOCIATE-RQ from %s: %s; aborted", dul.assoc.requestor.address, exc)
        pdu = A_ABORT_RQ()
        pdu.source, pdu.reason_diagnostic = 0x02, 0x06  # service-provider, invalid-PDU-parameter value
        dul._send(pdu)
        dul.artim_timer.start()
        next_state = "Sta13"
    if next_state != "Sta3":
        _wake_acceptor(dul)
    elif dul.socket and dul.socket.socket:
        dul.socket.socket.settimeout(dul.assoc.network_timeout)
    return next_state


def _ending_without_request(name: str):
    """AA-1 (invalid PDU), AA-2 (A-ABORT, ARTIM expired), AA-5 (closed): wake a waiting acceptor."""

    def run(dul) -> str:
        waiting = _leaving_sta2(dul)
        next_state = PYNETDICOM_ACTIONS[name](dul)
        if waiting:
            _wake_acceptor(dul)
        return next_state

    run.pynetdicom_action = PYNETDICOM_ACTIONS[name]
    return run


PYNETDICOM_ACTIONS = {
    name: getattr(fsm.ACTIONS[name][1], "pynetdicom_action", fsm.ACTIONS[name][1])
    for name in ("AE-6", "AA-1", "AA-2", "AA-5")
}
_read_associate_rq_or_abort.pynetdicom_action = PYNETDICOM_ACTIONS["AE-6"]
fsm.ACTIONS["AE-6"] = (fsm.ACTIONS["AE-6"][0], _read_associate_rq_or_abort, fsm.ACTIONS["AE-6"][2])
for _name in ("AA-1", "AA-2", "AA-5"):
    fsm.ACTIONS[_name] = (fsm.ACTIONS[_name][0], _ending_without_request(_name), fsm.ACTIONS[_name][2])


def calling_ae_allowed(ae_title: str, address: str = "") -> bool:
    """A registered, enabled AE title (its own or an alias), from its host if it is bound to one
    (issue 9); unknown titles only with RIS_DICOM_ALLOW_ANY_AE, which never lifts a host binding."""
    close_old_connections()
    try:
        modality = Modality.for_calling_ae(ae_title)
        if modality is None:
            return settings.RIS_DICOM_ALLOW_ANY_AE
        return modality.accepts_address(address)
    finally:
        close_old_connections()


def _audit_refusal(calling: str, address: str) -> None:
    """A refused association is a security event (PS3.15 A.5.3.8 Security Alert): record it."""
    from ris.workflow import Actor, audit

    close_old_connections()
    try:
        audit(Actor.for_ae(calling, address), "dicom.association_refused", outcome="failure", reason="calling AE")
    except Exception:  # the refusal must go out even if the database is away
        log.exception("could not audit the refused association from %s", address)
    finally:
        close_old_connections()


def handle_requested(event: evt.Event) -> None:
    calling = event.assoc.requestor.primitive.calling_ae_title.strip()
    address = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
    if not calling_ae_allowed(calling, event.assoc.requestor.address):
        log.warning("association from %s refused: calling AE %r is not registered for that address", address, calling)
        _audit_refusal(calling, event.assoc.requestor.address)
        event.assoc.acse.send_reject(*REJECT_CALLING_AE)
        event.assoc.kill()


def handle_echo(event: evt.Event) -> int:
    return 0x0000


def handle_open(event: evt.Event) -> None:
    # DIMSE round trips are small request/response pairs: Nagle would add ~40 ms to each.
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # An accepted socket blocks without limit: a peer that sent part of a PDU and then nothing
        # held its DUL thread, connection and association slot for good (issue 9). The ARTIM
        # timeout until the A-ASSOCIATE-RQ is in, the network timeout after (_read_associate_rq_or_abort).
        sock.settimeout(event.assoc.acse_timeout)
    if isinstance(sock, ssl.SSLSocket):
        try:
            sock.do_handshake()  # here, in the association's thread: see accept_without_handshake
        except (OSError, ValueError) as exc:
            log.warning("TLS handshake with %s failed: %s", event.address[0], exc)
            sock.close()  # the DUL sees the connection closed (AA-5) and the association ends


def accept_without_handshake(self: AssociationServer) -> tuple[socket.socket, tuple[str, int]]:
    """pynetdicom 3.0.4 does the TLS handshake on the listener's accept loop, on a socket with no
    timeout: one peer that connected and sent nothing stopped every other association for good
    (issue 9). Accept only; handle_open shakes hands in the association's thread, within ARTIM."""
    client, address = self.socket.accept()
    if self.ssl_context:
        client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
    return client, address


AssociationServer.get_request = accept_without_handshake


def register(ae: AE) -> list[tuple]:
    """Verification (C-ECHO), and the association policy every service shares."""
    ae.add_supported_context(Verification)
    return [
        (evt.EVT_CONN_OPEN, handle_open),
        (evt.EVT_REQUESTED, handle_requested),
        (evt.EVT_C_ECHO, handle_echo),
    ]


# The services of the SCP, each a module with register(ae) -> [(event, handler), ...].
SERVICES = ["worklist.scp", "worklist.mwl", "worklist.mpps", "worklist.storage", "worklist.ian"]
# The association log (issue 7 §9) only watches; it comes last so it sees this module's refusals.
SERVICES.append("worklist.associations")


def build_ae() -> tuple[AE, list[tuple]]:
    ae = AE(ae_title=settings.RIS_AE_TITLE)
    ae.maximum_associations = settings.RIS_DICOM_MAX_ASSOCIATIONS
    # ARTIM: a modality sends its A-ASSOCIATE-RQ right after connecting; a connection that sends
    # nothing (or half a PDU) holds an association slot until this expires (issue 9).
    ae.acse_timeout = 10
    ae.dimse_timeout = 60
    ae.network_timeout = 300  # an idle established association: modalities keep one open a while
    handlers = []
    for module in SERVICES:
        handlers += importlib.import_module(module).register(ae)
    return ae, [(e, audited_find(h) if e is evt.EVT_C_FIND else h) for e, h in handlers]


# --- audit of worklist queries (issue 9) ---
QUERY_KEYS = ("PatientID", "PatientName", "AccessionNumber", "StudyInstanceUID")
STEP_KEYS = ("ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "Modality")


def _query_keys(identifier) -> dict[str, str]:
    keys = {k: str(identifier.get(k, ""))[:64] for k in QUERY_KEYS if identifier.get(k)}
    steps = identifier.get("ScheduledProcedureStepSequence") or []
    for k in STEP_KEYS if len(steps) == 1 else ():
        if steps[0].get(k):
            keys[k] = str(steps[0].get(k))[:64]
    return keys


def audited_find(handler):
    """Wrap a C-FIND handler: each query becomes one AuditEvent "worklist.queried" (PS3.15
    A.5.3.12 Query) naming the calling AE, its address, the query keys and the matches sent."""

    def find(event: evt.Event):
        matches, outcome = 0, "success"
        try:
            for status, identifier in handler(event):
                matches += identifier is not None
                code = status if isinstance(status, int) else getattr(status, "Status", 0)
                if code not in (0x0000, 0xFF00, 0xFF01):
                    outcome = "failure"
                yield status, identifier
        except GeneratorExit:
            outcome = "cancelled"
            raise
        finally:
            _audit_query(event, matches, outcome)

    return find


def _audit_query(event: evt.Event, matches: int, outcome: str) -> None:
    from ris.workflow import Actor, audit

    requestor = event.assoc.requestor
    close_old_connections()
    try:
        try:
            keys = _query_keys(event.identifier)
        except Exception:  # an undecodable identifier was answered with a failure: still audited
            keys = {"identifier": "undecodable"}
        actor = Actor.for_ae(requestor.primitive.calling_ae_title.strip(), requestor.address)
        audit(actor, "worklist.queried", outcome=outcome, matches=matches, keys=keys)
    except Exception:
        log.exception("could not audit a worklist query from %s", requestor.address)
    finally:
        close_old_connections()


def tls_context() -> ssl.SSLContext | None:
    """TLS for the SCP port from RIS_DICOM_TLS_CERT/KEY (issue 9); with RIS_DICOM_TLS_CA the
    calling side must present a certificate that CA signed (PS3.15 B.1, BCP 195: TLS 1.2+)."""
    if not (settings.RIS_DICOM_TLS_CERT and settings.RIS_DICOM_TLS_KEY):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.RIS_DICOM_TLS_CERT, settings.RIS_DICOM_TLS_KEY)
    if settings.RIS_DICOM_TLS_CA:
        context.load_verify_locations(settings.RIS_DICOM_TLS_CA)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def serve(stop: threading.Event | None = None) -> None:
    """Run the SCP until `stop` is set (or forever)."""
    reactor.install()
    ae, handlers = build_ae()
    address = (settings.RIS_BIND, settings.RIS_DICOM_PORT)
    context = tls_context()
    server = ae.start_server(address, block=False, evt_handlers=handlers, ssl_context=context)
    log.info("DICOM SCP %s listening on %s:%s%s", settings.RIS_AE_TITLE, *address, " (TLS)" if context else "")
    try:
        (stop or threading.Event()).wait()
    finally:
        server.shutdown()
        log.info("DICOM SCP stopped")
