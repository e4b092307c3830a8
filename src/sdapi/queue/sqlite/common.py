"""What the SQLite backend's ports share: the state they work on, and helpers."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sdapi.database.sqlite import SQLiteDatabase
from sdapi.metrics import Sample
from sdapi.queue.base import Clock
from sdapi.queue.doorbell import Doorbell
from sdapi.queue.rows import BUMP_METRIC

#: How many queued jobs a claim looks at to gather a batch of compatible ones.
CLAIM_WINDOW = 64


class SQLiteBase:
    """The state every port of the backend works on (set by SQLiteQueue)."""

    db: SQLiteDatabase
    clock: Clock
    max_attempts: int
    #: Wakes waiting workers and requests in every process sharing the file (after commits).
    bell: Doorbell


def bump(conn: sqlite3.Connection, samples: Sequence[Sample]) -> None:
    """Add to the deployment's counters, in the caller's transaction."""
    conn.executemany(BUMP_METRIC.format(p="?"), samples)
