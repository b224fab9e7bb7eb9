from django.apps import AppConfig


class WorklistConfig(AppConfig):
    name = "worklist"
    verbose_name = "DICOM services"

    def ready(self) -> None:
        # Prepare each step's worklist answer in the transaction that changes it (issue 4).
        from ris.workflow import scheduled_steps_changed
        from worklist.datasets import on_scheduled_steps_changed

        scheduled_steps_changed.connect(on_scheduled_steps_changed, dispatch_uid="worklist.mwl_dataset")
