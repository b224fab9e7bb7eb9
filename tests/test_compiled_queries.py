"""ris.compiled: a query compiled once answers like the ORM query it was written as."""

import datetime as dt

import pytest

from ris.compiled import CompiledQuery
from ris.models import Patient

pytestmark = pytest.mark.django_db

BY_ID = CompiledQuery(
    lambda patient_id, issuer: Patient.objects.filter(patient_id=patient_id, issuer=issuer).order_by("pk"),
    patient_id=str,
    issuer=str,
)
IDS_ABOVE = CompiledQuery(
    lambda above, family: Patient.objects.filter(pk__gt=above, family_name=family).values_list("patient_id"),
    above=int,
    family=str,
)


def test_a_compiled_query_answers_each_run_with_that_runs_values():
    first = Patient.objects.create(patient_id="P1", issuer="HOSP", family_name="Nguyễn", birth_date=dt.date(1970, 1, 2))
    Patient.objects.create(patient_id="P2", issuer="HOSP", family_name="Nguyễn")
    found = BY_ID.first(patient_id="P1", issuer="HOSP")
    assert (found.pk, found.family_name, found.birth_date) == (first.pk, "Nguyễn", dt.date(1970, 1, 2))
    assert BY_ID.first(patient_id="P1", issuer="OTHER") is None
    assert BY_ID.first(patient_id="P2", issuer="HOSP").patient_id == "P2"
    assert IDS_ABOVE.rows(above=first.pk, family="Nguyễn") == [("P2",)]
    assert IDS_ABOVE.rows(above=0, family="Trần") == []


def test_a_value_the_orm_transforms_is_refused_at_compile_time():
    upper = CompiledQuery(lambda name: Patient.objects.filter(family_name__icontains=name), name=str)
    with pytest.raises(ValueError, match="name"):
        upper.rows(name="nguyen")
