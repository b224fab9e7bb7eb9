"""`manage.py hl7send FILE --to HOST:PORT`: send a file of HL7 messages over MLLP, print each ACK."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from hl7.client import MLLPClient, parse_address, split_messages


class Command(BaseCommand):
    help = (
        "Send every HL7 message in FILE (MLLP-framed, or plain text with one segment per line) over one "
        "MLLP connection, printing each acknowledgment. Exit status 1 if any answer is not AA."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--to", required=True, help="HOST:PORT of the MLLP listener")
        parser.add_argument("--timeout", type=float, default=30.0)

    def handle(self, *args, **options) -> None:
        try:
            host, port = parse_address(options["to"])
            messages = split_messages(options["file"].read_bytes())
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if not messages:
            raise CommandError(f"no HL7 message in {options['file']}")
        refused = 0
        with MLLPClient(host, port, options["timeout"]) as client:
            for message in messages:
                ack = client.send(message)
                self.stdout.write(ack.decode("utf-8", errors="replace").replace("\r", "\n").rstrip("\n"))
                self.stdout.write("")
                if b"MSA|AA" not in ack:
                    refused += 1
        if refused:
            raise CommandError(f"{refused} of {len(messages)} messages were not accepted (AA)")
