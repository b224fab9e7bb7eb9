"""Reprocess a rejected inbound HL7 message (issue 7 §7): once an operator fixed the cause
(a sender profile's character set, a missing order, a station rule), the stored frame runs
again through the inbound pipeline (hl7.inbound.handle_frame) as a NEW journal entry.

The original entry is left as it was: it records what the sender was answered. The new entry's
peer is "<original address>:reprocess #<original id>" (the frame comes again from where it came
from, so a sender profile's allowed_peers still applies) and its error text starts with
"reprocess of #<id>", which links the two. Its answer is kept in the journal only; the sender
is not told.

The journal answers a repeated MSH-10 from the same sender with the earlier AA/AE answer
(contract: "changes nothing"). An AR answer is not reused, so an AR frame runs again unchanged
(and gets the AA answer back if the sender has meanwhile resent it successfully). An AE answer
would simply be replayed, so an AE frame runs again under MSH-10 "<MSH-10>-R<n>" (n counts the
reprocesses of that entry); the raw bytes are otherwise unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from hl7 import inbound
from hl7.models import InboundMessage
from ris import workflow
from ris.models import ActorKind

REPROCESSABLE = ("AE", "AR")
PEER_MARK = ":reprocess #"  # between the original address and the original entry's id
PERMISSION = "ris.view_auditevent"  # the administrators', who read the HL7 journal


@dataclass(frozen=True)
class Reprocessed:
    original: InboundMessage
    entry: InboundMessage  # the new journal entry
    control_id: str  # MSH-10 the frame ran under


def link_peer(original: InboundMessage) -> str:
    """The peer of `original`'s reprocess entries: its address, then the link to it."""
    address = original.peer.rsplit(":", 1)[0]
    return f"{address[: 64 - len(PEER_MARK) - 12]}{PEER_MARK}{original.pk}"


def reprocess_of(entry: InboundMessage) -> int | None:
    """The id of the entry that `entry` reprocessed, if it is a reprocess."""
    _, mark, number = entry.peer.rpartition(PEER_MARK)
    return int(number) if mark and number.isdigit() else None


def with_control_id(raw: bytes, control_id: str) -> bytes:
    """The frame with MSH-10 replaced (MSH-1 is the field separator, so MSH-10 is field 9)."""
    end = min((i for i in (raw.find(b"\r"), raw.find(b"\n")) if i >= 0), default=len(raw))
    head, rest = raw[:end], raw[end:]
    separator = head[3:4]
    fields = head.split(separator)
    fields += [b""] * (10 - len(fields))
    fields[9] = control_id.encode("latin-1", "replace")
    return separator.join(fields) + rest


def reprocess(actor: workflow.Actor, original: InboundMessage) -> Reprocessed:
    """Run `original`'s frame again through the inbound pipeline; audited as hl7.reprocessed."""
    if original.outcome not in REPROCESSABLE:
        raise workflow.WorkflowError("invalid", f"only AE or AR answers can be reprocessed, not {original.outcome!r}")
    if actor.kind == ActorKind.USER and not actor.user.has_perm(PERMISSION):
        raise workflow.WorkflowError("permission_denied", f"{actor.name} may not reprocess HL7 messages")
    raw, control_id = bytes(original.raw), original.control_id
    peer = link_peer(original)
    if original.outcome == "AE" and original.control_id:
        control_id = f"{original.control_id}-R{InboundMessage.objects.filter(peer=peer).count() + 1}"
        raw = with_control_id(raw, control_id)
    before = InboundMessage.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    # The operator has usually just fixed a sender profile: read it afresh, not from the cache.
    inbound.forget_sender_profiles()
    inbound.handle_frame(raw, peer)
    entry = InboundMessage.objects.filter(peer=peer, pk__gt=before).order_by("-pk").first()
    if entry is None:  # the journal was unavailable: handle_frame answered AR without an entry
        raise workflow.WorkflowError("invalid", "the journal is unavailable; nothing was reprocessed")
    entry.error = f"reprocess of #{original.pk}" + (f": {entry.error}" if entry.error else "")
    InboundMessage.objects.filter(pk=entry.pk).update(error=entry.error)
    workflow.audit(
        actor,
        "hl7.reprocessed",
        original=original.pk,
        entry=entry.pk,
        control_id=control_id,
        old_outcome=original.outcome,
        new_outcome=entry.outcome,
    )
    return Reprocessed(original, entry, control_id)
