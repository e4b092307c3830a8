"""The SQLite file itself: durable across reopening, migrations applied once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sdapi.database.sqlite import SQLiteDatabase
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
    assert names == ["0001_initial.sql"] and mode == "wal"


def test_ids_are_never_reused(tmp_path: Path) -> None:
    queue = SQLiteQueue(SQLiteDatabase(tmp_path / "sdapi.db"))
    first = queue.enqueue(NewJob("k", make_request(), ("generations/a-0.png",))).id
    with sqlite3.connect(tmp_path / "sdapi.db") as raw:
        raw.execute("DELETE FROM jobs")
    assert queue.enqueue(NewJob("k", make_request(), ("generations/b-0.png",))).id > first
