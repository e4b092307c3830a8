"""The backends every contract test runs on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sdapi.database.sqlite import SQLiteDatabase
from sdapi.queue.base import JobQueue
from sdapi.queue.memory import MemoryQueue
from sdapi.queue.sqlite import SQLiteQueue
from tests.helpers import FakeClock


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def opener(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[Callable[[], JobQueue]]:
    """Opens the backend: each call a new handle on the same queue, as another process would
    have (the memory queue, which no other process can share, is one object)."""
    opened: list[JobQueue] = []
    if request.param == "memory":
        memory = MemoryQueue(max_attempts=3, clock=clock)

        def open_queue() -> JobQueue:
            return memory
    elif request.param == "sqlite":

        def open_queue() -> JobQueue:
            q = SQLiteQueue(SQLiteDatabase(tmp_path / "q.db"), max_attempts=3, clock=clock)
            opened.append(q)
            return q
    else:
        # Asked for only here, so memory and SQLite runs never skip for want of a server.
        url = request.getfixturevalue("postgres_url")
        from sdapi.database.postgres import PostgresDatabase
        from sdapi.queue.postgres import PostgresQueue

        def open_queue() -> JobQueue:
            # A pool as large as the concurrency test's thread count: each claimer holds its
            # own connection for its whole claim, so the claims really do run side by side.
            q = PostgresQueue(PostgresDatabase(url, max_size=8), max_attempts=3, clock=clock)
            opened.append(q)
            return q

    yield open_queue
    for q in opened:
        q.close()


@pytest.fixture
def queue(opener: Callable[[], JobQueue]) -> JobQueue:
    return opener()


@pytest.fixture
def twin(opener: Callable[[], JobQueue], queue: JobQueue) -> JobQueue:
    """A second handle on `queue`'s backend (another process's view of it)."""
    return opener()
