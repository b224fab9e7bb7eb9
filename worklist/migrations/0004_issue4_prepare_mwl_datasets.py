"""Prepare the worklist answer of every open step that existed before issue 4 (idempotent)."""

from django.db import migrations


def prepare(apps, schema_editor):
    from worklist.datasets import build_mwl_dataset

    ScheduledStep = apps.get_model("ris", "ScheduledStep")
    steps = ScheduledStep.objects.filter(status__in=["SCHEDULED", "ARRIVED", "STARTED"], start__isnull=False).select_related(
        "requested_procedure__order__patient"
    )
    batch = []
    for step in steps.iterator(chunk_size=500):
        step.mwl_dataset = build_mwl_dataset(step)
        batch.append(step)
        if len(batch) == 500:
            ScheduledStep.objects.bulk_update(batch, ["mwl_dataset"])
            batch = []
    ScheduledStep.objects.bulk_update(batch, ["mwl_dataset"])


class Migration(migrations.Migration):
    dependencies = [
        ("ris", "0002_catalogue_rules_hours"),
        ("worklist", "0003_issue4_mwl_coercions"),
    ]

    operations = [migrations.RunPython(prepare, migrations.RunPython.noop)]
