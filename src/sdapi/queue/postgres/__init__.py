"""The PostgreSQL queue backend (scale-out): many API replicas and workers share one database.

The semantics are SQLiteQueue's, statement for statement where possible: every change of state
is one conditional UPDATE whose WHERE lists the states the transition table allows as sources,
so a stale worker's late write simply matches no row.

What differs is how concurrency is handled. SQLite serialises writers; here claimers run in
parallel, so a claim locks the rows it takes with `FOR UPDATE SKIP LOCKED`: two claimers never
get the same job, and neither waits for the other (each simply passes over the rows the other
holds). Enqueueing, and reaping that puts jobs back in line, sends a NOTIFY so idle workers
blocked in `wait_for_work` wake at once instead of polling.

All times come from the injected clock, never from the database's now(), so a test's fake clock
and every machine's view of "expired" agree with the other backends.

Each port is a module of its own (jobs, outbox, measurements, workers, retention);
PostgresQueue puts them together on one database.
"""

from __future__ import annotations

import time

from sdapi.database.postgres import PostgresDatabase
from sdapi.queue.base import Clock
from sdapi.queue.listener import Listener
from sdapi.queue.postgres.common import CHANGES, CHANNEL
from sdapi.queue.postgres.jobs import PostgresJobs
from sdapi.queue.postgres.measurements import PostgresMeasurements
from sdapi.queue.postgres.outbox import PostgresOutbox
from sdapi.queue.postgres.retention import PostgresRetention
from sdapi.queue.postgres.workers import PostgresWorkers


class PostgresQueue(
    PostgresJobs, PostgresOutbox, PostgresMeasurements, PostgresWorkers, PostgresRetention
):
    """Every port on one PostgreSQL database."""

    def __init__(
        self, db: PostgresDatabase, *, max_attempts: int = 3, clock: Clock = time.time
    ) -> None:
        self.db = db
        self.max_attempts = max_attempts
        self.clock = clock
        self.work_listener = Listener(db, CHANNEL)
        self.changes_listener = Listener(db, CHANGES)

    def close(self) -> None:
        self.work_listener.close()
        self.changes_listener.close()
        self.db.close()
