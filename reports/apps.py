from django.apps import AppConfig


class ReportsConfig(AppConfig):
    name = "reports"
    verbose_name = "Reports and results out"

    def ready(self) -> None:
        # Results out: how each outbox destination is rendered and sent, and delivery queued
        # as soon as a signed report's rows are committed.
        from reports import delivery, fhir, oru
        from ris import outbox, workflow

        outbox.register_renderer("oru", oru.render_oru)
        outbox.register_renderer("fhir", fhir.render_fhir)
        outbox.register_sender("oru", delivery.send_mllp)
        outbox.register_sender("orm", delivery.send_mllp)
        outbox.register_sender("fhir", delivery.send_fhir)
        workflow.report_signed.connect(_queue_report_delivery, dispatch_uid="reports.queue_delivery")


def _queue_report_delivery(sender, report, outbound, **_kwargs) -> None:
    """report_signed is sent on commit: queue the rows now (a broker outage leaves them to the sweep)."""
    from ris import outbox

    outbox.enqueue([m.pk for m in outbound])
