"""Reconciling unscheduled exams (swf-spec §6 "Unscheduled"): an MPPS without a known step makes
an exam flagged for a scheduler, who matches it to its order or keeps it. The unscheduled exam
is made over a real association (pynetdicom MPPS SCU); the scheduler acts through ris.workflow."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from pydicom.uid import generate_uid

from ris import workflow
from ris.models import ExamStatus, PerformedStep, RequestedProcedure, StepStatus, Study
from tests.test_mpps_scp import final, in_progress, order_exam, reload, scu, step_item  # noqa: F401

pytestmark = pytest.mark.live


def person(role: str) -> workflow.Actor:
    user = User.objects.create_user(f"{role}-{generate_uid()[-6:]}", password="x" * 12)
    user.groups.add(Group.objects.get(name=role))
    return workflow.Actor.for_user(User.objects.get(pk=user.pk))


def unscheduled_exam(scu, *, complete: bool = True) -> RequestedProcedure:  # noqa: F811
    uid = generate_uid()
    assert scu.create(in_progress([step_item(None, sps_id="")], patient_id="WALKIN"), uid).Status == 0x0000
    if complete:
        assert scu.set(uid, final()).Status == 0x0000
    return PerformedStep.objects.get(sop_instance_uid=uid).scheduled_steps.get().requested_procedure


def test_reconciling_moves_the_mpps_and_the_progress_to_the_ordered_exam(scu):  # noqa: F811
    walk_in = unscheduled_exam(scu)
    Study.objects.create(study_instance_uid=walk_in.study_instance_uid, requested_procedure=walk_in)
    ordered = order_exam()
    workflow.reconcile_unscheduled_exam(person("scheduler"), walk_in, ordered)
    ordered = reload(ordered)
    assert ordered.status == ExamStatus.COMPLETED
    assert ordered.arrival_check_due_at is not None  # its completeness check is queued, the one pending
    assert ordered.scheduled_steps.get().status == StepStatus.COMPLETED
    assert PerformedStep.objects.get(scheduled_steps__requested_procedure=ordered)
    assert Study.objects.get(study_instance_uid=walk_in.study_instance_uid).requested_procedure == ordered
    walk_in = reload(walk_in)
    assert walk_in.status == ExamStatus.CANCELLED and not walk_in.needs_reconciliation


def test_an_in_progress_unscheduled_exam_makes_the_order_in_progress(scu):  # noqa: F811
    walk_in = unscheduled_exam(scu, complete=False)
    ordered = order_exam()
    workflow.reconcile_unscheduled_exam(person("scheduler"), walk_in, ordered)
    assert reload(ordered).status == ExamStatus.IN_PROGRESS
    assert reload(ordered).scheduled_steps.get().status == StepStatus.STARTED


def test_reconciling_onto_an_exam_already_performed_is_refused(scu):  # noqa: F811
    walk_in, other = unscheduled_exam(scu), unscheduled_exam(scu)
    with pytest.raises(workflow.WorkflowError) as refused:
        workflow.reconcile_unscheduled_exam(person("scheduler"), walk_in, other)
    assert refused.value.code == "illegal_transition"
    assert reload(walk_in).needs_reconciliation


def test_only_people_who_may_reconcile_can(scu):  # noqa: F811
    walk_in = unscheduled_exam(scu)
    with pytest.raises(workflow.WorkflowError) as refused:
        workflow.reconcile_unscheduled_exam(person("technologist"), walk_in, order_exam())
    assert refused.value.code == "permission_denied"


def test_keeping_an_unscheduled_exam_takes_it_off_the_reconciliation_list(scu):  # noqa: F811
    walk_in = unscheduled_exam(scu)
    workflow.keep_unscheduled_exam(person("scheduler"), walk_in)
    walk_in = reload(walk_in)
    assert not walk_in.needs_reconciliation and walk_in.unscheduled
    assert walk_in.status == ExamStatus.COMPLETED
