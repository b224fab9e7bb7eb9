"""`manage.py modality add|list|remove`: the modalities allowed to talk DICOM to the RIS."""

from django.core.management.base import BaseCommand, CommandError

from worklist.models import AnswerCharacterSet, Modality, ModalityAlias

CHARSET_NAMES = {
    "utf8": AnswerCharacterSet.UTF8,
    "latin1": AnswerCharacterSet.LATIN1,
    "ascii": AnswerCharacterSet.ASCII,
}


def ae_title(value: str) -> str:
    value = value.strip()
    if not value or len(value) > 16 or "\\" in value or not value.isprintable():
        raise CommandError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return value


class Command(BaseCommand):
    help = "Register, list or remove the DICOM modalities (calling AE titles) the RIS accepts."

    def add_arguments(self, parser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="register a modality, or update the one with this AE title")
        add.add_argument("ae_title")
        add.add_argument("--modality", required=True, help="DICOM modality code: CT, MR, US, CR, DX, MG, ...")
        add.add_argument("--station-name", default="")
        add.add_argument("--location", default="")
        add.add_argument("--host", default="")
        add.add_argument("--port", type=int)
        add.add_argument(
            "--charset",
            choices=sorted(CHARSET_NAMES),
            default="utf8",
            help="character set of worklist answers for this console (default utf8)",
        )
        add.add_argument("--disabled", action="store_true", help="register it but refuse its associations")
        add.add_argument(
            "--alias",
            action="append",
            default=[],
            help="a further AE title of the same console (repeatable); replaces the aliases it had",
        )
        add.add_argument(
            "--station-from-calling-ae",
            action="store_true",
            help="worklist queries with an empty Scheduled Station AE Title return only this station's steps",
        )
        add.add_argument(
            "--bind-to-host", action="store_true", help="accept this AE title only from the address given by --host"
        )
        sub.add_parser("list", help="list the registered modalities")
        remove = sub.add_parser("remove", help="remove a modality")
        remove.add_argument("ae_title")

    def handle(self, *args, **options) -> None:
        getattr(self, f"do_{options['action']}")(options)

    def do_add(self, options) -> None:
        title = ae_title(options["ae_title"])
        if options["bind_to_host"] and not options["host"]:
            raise CommandError("--bind-to-host needs --host")
        aliases = [ae_title(a) for a in options["alias"]]
        in_use = set(
            ModalityAlias.objects.filter(ae_title__in=aliases)
            .exclude(modality__ae_title=title)
            .values_list("ae_title", flat=True)
        ) | set(Modality.objects.filter(ae_title__in=aliases).values_list("ae_title", flat=True))
        if in_use:
            raise CommandError(f"AE title already in use: {', '.join(sorted(in_use))}")
        modality, created = Modality.objects.update_or_create(
            ae_title=title,
            defaults={
                "modality": options["modality"].strip().upper(),
                "station_name": options["station_name"],
                "location": options["location"],
                "host": options["host"],
                "port": options["port"],
                "answer_character_set": CHARSET_NAMES[options["charset"]],
                "enabled": not options["disabled"],
                "station_from_calling_ae": options["station_from_calling_ae"],
                "bind_to_host": options["bind_to_host"],
            },
        )
        modality.aliases.exclude(ae_title__in=aliases).delete()
        for alias in aliases:
            ModalityAlias.objects.get_or_create(modality=modality, ae_title=alias)
        self.stdout.write(f"{'added' if created else 'updated'} {modality.ae_title} ({modality.modality})")

    def do_list(self, options) -> None:
        rows = Modality.objects.prefetch_related("aliases")
        if not rows:
            self.stdout.write("no modalities registered")
        for m in rows:
            address = f"{m.host}:{m.port}" if m.host else "-"
            aliases = ",".join(a.ae_title for a in m.aliases.all())
            self.stdout.write(
                f"{m.ae_title:<16} {m.modality:<4} {m.station_name or '-':<16} {address:<21} "
                f"{'enabled' if m.enabled else 'disabled'}" + (f"  aliases: {aliases}" if aliases else "")
            )

    def do_remove(self, options) -> None:
        deleted, _ = Modality.objects.filter(ae_title=options["ae_title"].strip()).delete()
        if not deleted:
            raise CommandError(f"no modality with AE title {options['ae_title']!r}")
        self.stdout.write(f"removed {options['ae_title'].strip()}")
