"""The figures a fault scenario must hold, read from the database and the peers, and the table
`make faults` prints."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.db import close_old_connections, connection

RESULTS: list[dict] = []  # one row per scenario run in this process, printed at the end


@dataclass
class Figures:
    fault: str
    held: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (good, total)
    notes: list[str] = field(default_factory=list)

    def check(self, name: str, good: int, total: int) -> None:
        self.held[name] = (good, total)

    @property
    def failures(self) -> list[str]:
        return [f"{k}: {g}/{t}" for k, (g, t) in self.held.items() if g != t]


def settle(condition, timeout: float) -> bool:
    """Wait for the stack to converge after the fault (the sweeps run every second here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except Exception:  # the database may still be coming back
            close_old_connections()
            connection.close()
        time.sleep(0.5)
    return condition()


def orders_held(figures: Figures, sender) -> None:
    """Every ACKed order exists exactly once; every message was ACKed or refused."""
    from ris.models import ImagingOrder

    outcomes = sender.tally.outcomes
    answered = [k for k, v in outcomes.items() if v in ("AA", "AE", "AR", "CA", "CE")]
    figures.check("ORMs answered (ACK or refusal)", len(answered), len(outcomes))
    accepted = [k for k, v in outcomes.items() if v in ("AA", "CA")]
    once = sum(1 for placer in accepted if ImagingOrder.objects.filter(placer_order_number=placer).count() == 1)
    figures.check("ACKed orders stored exactly once", once, len(accepted))
    refused = [k for k, v in outcomes.items() if v not in ("AA", "CA")]
    absent = sum(1 for placer in refused if not ImagingOrder.objects.filter(placer_order_number=placer).exists())
    figures.check("refused orders not stored", absent, len(refused))


def exams_ready(figures: Figures, modality) -> None:
    from ris.models import ExamStatus, RequestedProcedure

    done = [exam for exam, *_ in modality.exams if modality.tally.outcomes.get(exam.accession_number) == "ok"]
    figures.check("MPPS+C-STORE exams completed by the modality", len(done), len(modality.exams))
    failed = {k: v for k, v in modality.tally.outcomes.items() if v != "ok" and ":" in k}
    if failed:
        figures.notes.append(f"modality answers that were not success: {failed}")
    ready = RequestedProcedure.objects.filter(pk__in=[e.pk for e in done], status=ExamStatus.READY_FOR_READING)
    figures.check("completed exams READY_FOR_READING", ready.count(), len(done))


def deliveries_held(figures: Figures, his) -> None:
    """Every outbox row to the HIS delivered; each control id accepted (first arrival) in row
    order per exam; duplicates (a redelivery the HIS de-duplicates by MSH-10) are counted."""
    from ris.models import OutboundMessage, OutboxStatus

    rows = list(OutboundMessage.objects.filter(destination__in=["oru", "orm"]).order_by("id"))
    delivered = [r for r in rows if r.status == OutboxStatus.DELIVERED]
    figures.check("outbox rows delivered (ORU + ORM status)", len(delivered), len(rows))
    with his.lock:
        accepted = list(his.accepted)
    first = {}
    for index, control in enumerate(accepted):
        first.setdefault(control, index)
    figures.check("deliveries accepted by the HIS", sum(1 for r in rows if r.message_control_id in first), len(rows))
    by_exam: dict[int, list] = {}
    for r in rows:
        by_exam.setdefault(r.requested_procedure_id, []).append(r)
    in_order = 0
    for exam_rows in by_exam.values():
        positions = [first.get(r.message_control_id, -1) for r in exam_rows]
        in_order += positions == sorted(positions) and -1 not in positions
    figures.check("exams whose messages arrived in order", in_order, len(by_exam))
    reports = [r for r in rows if r.destination == "oru"]
    versions = {(r.report_id) for r in reports}
    figures.check("report versions with exactly one ORU row", len(versions), len(reports))
    figures.notes.append(f"{len(accepted) - len(first)} redelivered duplicate(s) (same MSH-10)")


def nothing_stuck(figures: Figures) -> None:
    from ris.models import ExamStatus, OutboundMessage, OutboxStatus, RequestedProcedure

    pending = OutboundMessage.objects.exclude(status=OutboxStatus.DELIVERED).count()
    completed = RequestedProcedure.objects.filter(status=ExamStatus.COMPLETED).count()
    figures.check("no outbox row pending/failed, no exam stuck COMPLETED", 0, pending + completed)


def table(rows: list[dict]) -> str:
    lines = ["| fault | injected | figure held | good/total |", "|---|---|---|---|"]
    for row in rows:
        for name, (good, total) in row["held"].items():
            mark = "" if good == total else " **LOST**"
            lines.append(f"| {row['fault']} | {row['injected']} | {name} | {good}/{total}{mark} |")
        for note in row["notes"]:
            lines.append(f"| {row['fault']} | | {note} | |")
    return "\n".join(lines)
