"""The backends every contract test runs on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sdapi.database.sqlite import SQLiteDatabase
from sdapi.queue.base import JobQueue
from sdapi.queue.memory import MemoryQueue
from sdapi.queue.sqlite import SQLiteQueue
from tests.helpers import FakeClock


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def queue(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[JobQueue]:
    q: JobQueue
    if request.param == "memory":
        q = MemoryQueue(max_attempts=3, clock=clock)
    elif request.param == "sqlite":
        q = SQLiteQueue(SQLiteDatabase(tmp_path / "q.db"), max_attempts=3, clock=clock)
    else:
        # Asked for only here, so memory and SQLite runs never skip for want of a server.
        url = request.getfixturevalue("postgres_url")
        from sdapi.database.postgres import PostgresDatabase
        from sdapi.queue.postgres import PostgresQueue

        # A pool as large as the concurrency test's thread count: each claimer holds its own
        # connection for its whole claim, so the claims really do run side by side.
        q = PostgresQueue(PostgresDatabase(url, max_size=8), max_attempts=3, clock=clock)
    yield q
    q.close()
