"""Instance Availability Notification SCP (PS3.4 Annex R; IHE RAD-49), swf-spec §7.

For sites where images go straight to the PACS: the PACS tells us, by N-CREATE, which
instances of a study it holds and whether they are ONLINE / NEARLINE / OFFLINE / UNAVAILABLE.
We record them (idempotent by SOP Instance UID) and ask a worker to check completeness.
An IAN for a study we do not know is still recorded (unmatched, visible to an operator) and
answered with success: the PACS did nothing wrong and nothing is lost.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import InstanceAvailabilityNotification

from ris import workflow
from ris.models import ArrivalSource
from worklist import arrival, mpps, tasks

IAN_SOP_CLASS = InstanceAvailabilityNotification


def handle_ian(event: evt.Event) -> tuple:
    ds: Dataset = event.attribute_list
    mpps.require(ds, ("StudyInstanceUID", "ReferencedSeriesSequence"))
    instances = arrival.instances_from_ian(ds)
    if not instances:
        raise mpps.Refusal(mpps.STATUS_MISSING_ATTRIBUTE_VALUE, "no ReferencedSOPSequence item")
    for index, item in enumerate(instances, 1):
        if not (item.series_instance_uid and item.sop_instance_uid):
            raise mpps.Refusal(mpps.STATUS_MISSING_ATTRIBUTE_VALUE, f"instance {index}: series or SOP UID empty")
    reply = Dataset()
    if not event.request.AffectedSOPInstanceUID:
        reply.AffectedSOPInstanceUID = workflow.new_uid()
    matched = arrival.record_arrivals(mpps.calling_actor(event), ArrivalSource.IAN, instances)
    tasks.schedule_check_after_arrival(matched.values())
    return mpps.STATUS_SUCCESS, reply if "AffectedSOPInstanceUID" in reply else None


def register(ae: AE) -> list[tuple]:
    ae.add_supported_context(IAN_SOP_CLASS)
    mpps.N_CREATE_HANDLERS[str(IAN_SOP_CLASS)] = mpps.answering(handle_ian, "IAN N-CREATE")
    return [(evt.EVT_N_CREATE, mpps.dispatch_n_create)]
