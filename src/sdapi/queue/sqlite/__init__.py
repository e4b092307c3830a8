"""The SQLite queue backend (the embedded default).

Every change of state is one conditional UPDATE whose WHERE lists the states the transition
table allows as sources, so a stale worker's late write simply matches no row.

Each port is a module of its own (jobs, outbox, measurements, workers, retention); SQLiteQueue
puts them together on one file.
"""

from __future__ import annotations

import time

from sdapi.database.sqlite import SQLiteDatabase
from sdapi.queue.base import Clock
from sdapi.queue.doorbell import Doorbell, folder_for
from sdapi.queue.sqlite.jobs import SQLiteJobs
from sdapi.queue.sqlite.measurements import SQLiteMeasurements
from sdapi.queue.sqlite.outbox import SQLiteOutbox
from sdapi.queue.sqlite.retention import SQLiteRetention
from sdapi.queue.sqlite.workers import SQLiteWorkers


class SQLiteQueue(SQLiteJobs, SQLiteOutbox, SQLiteMeasurements, SQLiteWorkers, SQLiteRetention):
    """Every port on one SQLite file."""

    def __init__(self, db: SQLiteDatabase, *, max_attempts: int = 3, clock: Clock = time.time):
        self.db = db
        self.max_attempts = max_attempts
        self.clock = clock
        #: Wakes waiting workers and requests in every process sharing the file (after commits).
        self.bell = Doorbell(folder_for(db.path))

    def close(self) -> None:
        self.bell.close()
        self.db.close()
