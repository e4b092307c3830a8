"""The SQLite file itself: durable across reopening, migrations applied once."""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path

from sdapi.database.sqlite import MIGRATIONS_PACKAGE, SQLiteDatabase
from sdapi.jobs import JobStatus
from sdapi.queue.base import NewJob
from sdapi.queue.sqlite import SQLiteQueue
from tests.helpers import make_request


def test_jobs_survive_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "sdapi.db"
    queue = SQLiteQueue(SQLiteDatabase(path))
    job = queue.enqueue(NewJob("k", make_request(), ("generations/a-0.png",)))
    [claimed] = queue.claim("w", lease_s=30)
    queue.close()
    reopened = SQLiteQueue(SQLiteDatabase(path))
    again = reopened.get(job.id)
    assert again is not None and again.status is JobStatus.PROCESSING
    assert again.lease_id == claimed.lease_id and again.request == job.request


def test_migrations_apply_once_and_are_recorded(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "sdapi.db")
    assert db.migrate() == []  # the constructor already applied them
    with sqlite3.connect(tmp_path / "sdapi.db") as raw:
        names = [r[0] for r in raw.execute("SELECT name FROM schema_migrations")]
        mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
    expected = sorted(
        f.name for f in resources.files(MIGRATIONS_PACKAGE).iterdir() if f.name.endswith(".sql")
    )
    assert names == expected and len(expected) >= 5 and mode == "wal"


def test_a_database_from_before_a_migration_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "sdapi.db"
    first = resources.files(MIGRATIONS_PACKAGE).joinpath("0001_initial.sql").read_text()
    with sqlite3.connect(path) as raw:  # a database as the first release left it
        raw.executescript(first)
        raw.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        raw.execute("INSERT INTO schema_migrations VALUES ('0001_initial.sql', 0)")
        raw.execute(
            "INSERT INTO jobs (owner, status, model, request, batch_key, rate_key, work_units,"
            " output_names, created_at) VALUES ('k', 'success', 'm', ?, 'b', 'r', 1, '[]', 5)",
            (make_request().to_json(),),
        )
    job = SQLiteQueue(SQLiteDatabase(path)).get(1)
    assert job is not None and job.status is JobStatus.SUCCESS
    assert (job.webhook_status, job.deadline_at, job.keep_until) == ("", None, None)


def test_ids_are_never_reused(tmp_path: Path) -> None:
    queue = SQLiteQueue(SQLiteDatabase(tmp_path / "sdapi.db"))
    first = queue.enqueue(NewJob("k", make_request(), ("generations/a-0.png",))).id
    with sqlite3.connect(tmp_path / "sdapi.db") as raw:
        raw.execute("DELETE FROM jobs")
    assert queue.enqueue(NewJob("k", make_request(), ("generations/b-0.png",))).id > first
