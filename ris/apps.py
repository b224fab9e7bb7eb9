from django.apps import AppConfig


class RisConfig(AppConfig):
    name = "ris"
    verbose_name = "Radiology information system"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from ris.roles import ensure_roles

        post_migrate.connect(ensure_roles, sender=self)
