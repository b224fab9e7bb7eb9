"""The backup and restore procedure of docs/deployment.md, run once for real: dump the
database, restore it into a fresh one, and find every row again."""

import sqlite3
import subprocess
import uuid

import psycopg
import pytest
from django.apps import apps
from django.db import connection

from ris import workflow
from tests.test_workflow import CT1, make_exam, perform

pytestmark = pytest.mark.django_db(transaction=True)


def row_counts(cursor) -> dict[str, int]:
    counts = {}
    for model in apps.get_models():
        table = model._meta.db_table
        cursor.execute(f'SELECT COUNT(*) FROM "{table}"')
        counts[table] = cursor.fetchone()[0]
    return counts


def make_some_work() -> None:
    for _ in range(3):
        exam = make_exam()
        perform(exam, f"1.2.7.{exam.pk}", [workflow.ExpectedImage("1.2.7.1", f"1.2.7.1.{exam.pk}")])
    workflow.cancel_exam(CT1, make_exam())


def test_dump_and_restore_keeps_every_row(tmp_path):
    make_some_work()
    with connection.cursor() as cursor:
        before = row_counts(cursor)
    assert before["ris_requestedprocedure"] == 4 and before["ris_auditevent"] > 10
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        copy = tmp_path / "restored.sqlite3"
        # The online backup API copies a consistent snapshot while the RIS keeps running.
        with sqlite3.connect(s["NAME"]) as source, sqlite3.connect(copy) as target:
            source.backup(target)
        with sqlite3.connect(copy) as restored:
            after = row_counts(restored.cursor())
    else:
        dump = tmp_path / "ris.dump"
        target = f"restore_{uuid.uuid4().hex[:8]}"
        conninfo = {"host": s["HOST"] or "127.0.0.1", "port": s["PORT"] or 5432, "user": s["USER"]}
        args = ["-h", conninfo["host"], "-p", str(conninfo["port"]), "-U", conninfo["user"]]
        subprocess.run(["pg_dump", "-Fc", *args, "-f", str(dump), s["NAME"]], check=True, timeout=120)
        with psycopg.connect(dbname="postgres", autocommit=True, **conninfo) as admin:
            admin.execute(f'CREATE DATABASE "{target}"')
        try:
            subprocess.run(["pg_restore", *args, "-d", target, "--no-owner", str(dump)], check=True, timeout=120)
            with psycopg.connect(dbname=target, **conninfo) as restored:
                after = row_counts(restored.cursor())
        finally:
            with psycopg.connect(dbname="postgres", autocommit=True, **conninfo) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{target}"')
    assert after == before
