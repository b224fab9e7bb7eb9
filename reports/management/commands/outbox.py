"""`manage.py outbox list|retry|sweep`: the operator's view of outbound messages (ris/outbox.py)."""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ris import outbox
from ris.models import OutboundMessage, OutboxStatus


class Command(BaseCommand):
    help = (
        "Outbound messages (ORU, ORM, FHIR). `list` shows undelivered rows (--all: every row); "
        "`retry ID... | --failed` puts parked rows back in the queue; `sweep` queues every due row now."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["list", "retry", "sweep"])
        parser.add_argument("ids", nargs="*", type=int, help="outbox row ids (retry)")
        parser.add_argument("--failed", action="store_true", help="retry every FAILED row")
        parser.add_argument("--all", action="store_true", help="list delivered rows too")
        parser.add_argument("--limit", type=int, default=100)

    def handle(self, *args, action: str, ids: list[int], failed: bool, all: bool, limit: int, **options) -> None:
        if action == "list":
            rows = OutboundMessage.objects.select_related("requested_procedure").order_by("-id")
            if not all:
                rows = rows.exclude(status=OutboxStatus.DELIVERED)
            for row in rows[:limit]:
                accession = row.requested_procedure.accession_number if row.requested_procedure else "-"
                self.stdout.write(
                    f"{row.pk:>8} {row.destination:<5} {row.status:<9} {row.attempts:>3} "
                    f"{accession:<16} {row.message_control_id:<22} {row.last_error[:80]}"
                )
        elif action == "retry":
            if not ids and not failed:
                raise CommandError("name the rows to retry, or --failed for every parked row")
            rows = OutboundMessage.objects.filter(status=OutboxStatus.FAILED)
            if ids:
                rows = rows.filter(pk__in=ids)
            self.stdout.write(f"{outbox.retry_failed(list(rows))} message(s) queued again")
        else:
            heads = outbox.due_heads()
            outbox.enqueue(heads)
            self.stdout.write(f"{len(heads)} message(s) queued")
