"""`manage.py user add NAME --role ROLE [--password P]`: people who use the RIS."""

import getpass

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from ris.roles import ROLES, ensure_roles


class Command(BaseCommand):
    help = "Create a user with a role (scheduler, technologist, radiologist, admin), or change their role."

    def add_arguments(self, parser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="create a user, or update role/password of an existing one")
        add.add_argument("username")
        add.add_argument("--role", required=True, choices=ROLES)
        add.add_argument("--password", help="asked for interactively when omitted")
        add.add_argument("--email", default="")
        add.add_argument("--name", default="", help="full name shown in the UI and on reports")
        sub.add_parser("list", help="list users and their roles")

    def handle(self, *args, **options) -> None:
        if options["action"] == "list":
            for user in get_user_model().objects.order_by("username").prefetch_related("groups"):
                roles = ",".join(g.name for g in user.groups.all()) or "-"
                self.stdout.write(f"{user.username:<20} {roles:<20} {'active' if user.is_active else 'inactive'}")
            return
        self.add(options)

    def add(self, options) -> None:
        ensure_roles()
        User = get_user_model()
        user, created = User.objects.get_or_create(username=options["username"])
        password = options["password"]
        if password is None and created:
            password = getpass.getpass(f"Password for {user.username}: ")
        if password is not None:
            try:
                password_validation.validate_password(password, user)
            except ValidationError as exc:
                if created:
                    user.delete()
                raise CommandError("; ".join(exc.messages)) from exc
            user.set_password(password)
        if options["email"]:
            user.email = options["email"]
        if options["name"]:
            user.first_name, _, user.last_name = options["name"].partition(" ")
        role = options["role"]
        user.is_staff = role == "admin"
        user.save()
        user.groups.set([Group.objects.get(name=role)])
        self.stdout.write(f"{'created' if created else 'updated'} {user.username} ({role})")
