"""Recording image arrivals (C-STORE and IAN, swf-spec §7): DICOM datasets become
`ArrivedInstance` records, grouped by study, matched to their exam by Study Instance UID and
then by Accession Number, and recorded through ris.workflow.

Only the recording happens here, on the listener's thread; the completeness decision runs later
in a Celery task (worklist.tasks), so a modality is never kept waiting by it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ris import workflow
from ris.models import RequestedProcedure, Study

log = logging.getLogger(__name__)


def text_of(ds: Dataset, keyword: str) -> str:
    """An element's value as text ('' when absent or empty; the values of a multi-valued element
    joined by backslashes, as on the wire, each without its padding). An ASCII value still
    undecoded is read as it came: pydicom's conversion and validation cost ~11 µs an element,
    ~5 % of recording an instance. Anything else goes through pydicom, which applies the Specific
    Character Set."""
    element = ds.get_item(keyword)
    if element is None:
        return ""
    if isinstance(element, RawDataElement) and isinstance(element.value, bytes) and element.value.isascii():
        values = element.value.decode("ascii").split("\\")
    else:
        value = ds.get(keyword)
        values = value if isinstance(value, MultiValue) else [] if value is None else [value]
    return "\\".join(str(v).strip(" \0\t\r\n") for v in values)


def _integer(ds: Dataset, keyword: str) -> int | None:
    try:
        return int(text_of(ds, keyword))
    except ValueError:  # absent, empty, several values or not a number
        return None


def _date(ds: Dataset, keyword: str) -> dt.date | None:
    text = text_of(ds, keyword)[:8]
    try:  # YYYYMMDD (PS3.5 DA); strptime costs ~10 µs an instance
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:])) if len(text) == 8 and text.isdigit() else None
    except ValueError:  # no such day
        return None


def instance_from_dataset(ds: Dataset, file_path: str = "") -> workflow.ArrivedInstance:
    """A stored composite instance (C-STORE)."""
    return workflow.ArrivedInstance(
        study_instance_uid=text_of(ds, "StudyInstanceUID"),
        series_instance_uid=text_of(ds, "SeriesInstanceUID"),
        sop_instance_uid=text_of(ds, "SOPInstanceUID"),
        sop_class_uid=text_of(ds, "SOPClassUID"),
        accession_number=text_of(ds, "AccessionNumber"),
        patient_id=text_of(ds, "PatientID"),
        modality=text_of(ds, "Modality"),
        series_number=_integer(ds, "SeriesNumber"),
        instance_number=_integer(ds, "InstanceNumber"),
        study_date=_date(ds, "StudyDate"),
        file_path=file_path,
    )


def instances_from_ian(ds: Dataset) -> list[workflow.ArrivedInstance]:
    """The instances an Instance Availability Notification (PS3.3 C.4.23) announces:
    Referenced Series Sequence > Referenced SOP Sequence, each with its availability."""
    study_uid = text_of(ds, "StudyInstanceUID")
    accession = text_of(ds, "AccessionNumber")
    patient_id = text_of(ds, "PatientID")
    found = []
    for series in ds.get("ReferencedSeriesSequence", []) or []:
        series_uid = text_of(series, "SeriesInstanceUID")
        for sop in series.get("ReferencedSOPSequence", []) or []:
            found.append(
                workflow.ArrivedInstance(
                    study_instance_uid=study_uid,
                    series_instance_uid=series_uid,
                    sop_instance_uid=text_of(sop, "ReferencedSOPInstanceUID"),
                    sop_class_uid=text_of(sop, "ReferencedSOPClassUID"),
                    accession_number=accession,
                    patient_id=patient_id,
                    availability=text_of(sop, "InstanceAvailability").upper() or "ONLINE",
                    retrieve_ae_title=text_of(sop, "RetrieveAETitle").split("\\")[0],
                )
            )
    return found


def match_exam(study_instance_uid: str, accession_number: str) -> RequestedProcedure | None:
    """The exam a study belongs to: an already matched study keeps its exam; otherwise the
    exam with this Study Instance UID, then the one with this Accession Number."""
    study = Study.objects.filter(study_instance_uid=study_instance_uid).select_related("requested_procedure").first()
    if study is not None and study.requested_procedure is not None:
        return study.requested_procedure
    return workflow.find_exam(study_instance_uid, accession_number)


def record_arrivals(
    actor: workflow.Actor, source: str, instances: Iterable[workflow.ArrivedInstance]
) -> dict[str, int | None]:
    """Record instances (any number of studies). Returns {study UID: matched exam id or None}."""
    by_study: dict[str, list[workflow.ArrivedInstance]] = defaultdict(list)
    for item in instances:
        by_study[item.study_instance_uid].append(item)
    matched: dict[str, int | None] = {}
    for study_uid, items in by_study.items():
        exam = match_exam(study_uid, items[0].accession_number)
        workflow.record_instances_arrived(actor, exam, source, items)
        matched[study_uid] = exam.pk if exam is not None else None
    return matched


# --- Images before their order ---------------------------------------------------------------

MATCH_STUDIES = "worklist.tasks.match_unmatched_studies"


def on_exam_created(sender, instance: RequestedProcedure, created: bool, raw: bool = False, **_kwargs) -> None:
    """post_save of an exam (worklist.apps): once its order is committed, studies that arrived
    before it and that it claims are matched to it by a worker (the periodic sweep also does).
    One indexed query per new exam here; the broker only hears of it when there is something."""
    if created and not raw:
        transaction.on_commit(lambda: _queue_match_if_claimed(instance), robust=True)


def _queue_match_if_claimed(exam: RequestedProcedure) -> None:
    if not workflow.claims_unmatched_study(exam):
        return
    from ris.celery import app

    try:
        queue = app.conf.task_default_queue + settings.RIS_ARRIVAL_QUEUE_SUFFIX
        app.send_task(MATCH_STUDIES, args=[exam.pk], queue=queue)
    except Exception:
        log.exception("could not queue the matching of studies to exam %s; the sweep will", exam.pk)


# While an association delivers instances, the study's last arrival is refreshed at most this
# often (and once more when it ends), instead of one write per instance.
TOUCH_INTERVAL_SECONDS = 0.5


class ArrivalSession:
    """The arrivals of one association (C-STORE): the study and series rows are found or made
    once, then each instance is a single upsert. `close()` refreshes the studies' last arrival
    and returns the exams touched, for the completeness check."""

    def __init__(self, actor: workflow.Actor, source: str) -> None:
        self.actor, self.source = actor, source
        self.studies: dict[str, tuple[int, int | None]] = {}  # Study UID -> (study id, exam id)
        self.series: dict[str, int] = {}
        self.touched: dict[int, float] = {}  # study id -> monotonic time of the last refresh

    def record(self, item: workflow.ArrivedInstance) -> tuple[int | None, bool]:
        """Record one instance; returns (its exam id or None, whether this study is new here)."""
        known = self.studies.get(item.study_instance_uid)
        new = known is None
        if known is None:
            study = workflow.record_study_arrival(
                self.actor, match_exam(item.study_instance_uid, item.accession_number), item
            )
            known = self.studies[item.study_instance_uid] = (study.pk, study.requested_procedure_id)
            self.touched[study.pk] = time.monotonic()
        elif time.monotonic() - self.touched[known[0]] > TOUCH_INTERVAL_SECONDS:
            workflow.touch_studies([known[0]])
            self.touched[known[0]] = time.monotonic()
        series_id = self.series.get(item.series_instance_uid)
        if series_id is None:
            series_id = self.series[item.series_instance_uid] = workflow.record_series_arrival(known[0], item)
        workflow.record_instances(self.actor, self.source, series_id, [item])
        return known[1], new

    def close(self) -> set[int]:
        if self.touched:
            workflow.touch_studies(self.touched)
        return {exam for _, exam in self.studies.values() if exam is not None}
