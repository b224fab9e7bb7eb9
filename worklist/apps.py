from django.apps import AppConfig


class WorklistConfig(AppConfig):
    name = "worklist"
    verbose_name = "DICOM services"

    def ready(self) -> None:
        # Prepare each step's worklist answer in the transaction that changes it (issue 4).
        from ris.workflow import scheduled_steps_changed
        from worklist.datasets import on_scheduled_steps_changed

        scheduled_steps_changed.connect(on_scheduled_steps_changed, dispatch_uid="worklist.mwl_dataset")
        # Images that came before their order are matched to the exam once it exists (issue 5).
        from django.db.models.signals import post_save

        from ris.models import RequestedProcedure
        from worklist.arrival import on_exam_created

        post_save.connect(on_exam_created, sender=RequestedProcedure, dispatch_uid="worklist.arrival_before_order")
        # A reconciled exam's images are weighed by the same one-pending-check rule as any other.
        from ris.workflow import completeness_check_needed
        from worklist.tasks import on_completeness_check_needed

        completeness_check_needed.connect(on_completeness_check_needed, dispatch_uid="worklist.completeness_check")
