"""What the PostgreSQL backend's ports share: the state they work on, and helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from sdapi.database.postgres import PostgresDatabase
from sdapi.metrics import Sample
from sdapi.queue.base import Clock
from sdapi.queue.listener import Listener
from sdapi.queue.rows import BUMP_METRIC

#: How many queued jobs a claim looks at to gather a batch of compatible ones (as SQLite).
CLAIM_WINDOW = 64
#: The LISTEN/NOTIFY channels: "a job may be waiting" (workers), and "these jobs changed" (the
#: ids, comma separated, for requests waiting on them).
CHANNEL = "sdapi_jobs"
CHANGES = "sdapi_changes"

Connection = psycopg.Connection[dict[str, Any]]


class PostgresBase:
    """The state every port of the backend works on (set by PostgresQueue)."""

    db: PostgresDatabase
    clock: Clock
    max_attempts: int
    work_listener: Listener
    changes_listener: Listener


def bump(conn: Connection, samples: Sequence[Sample]) -> None:
    """Add to the deployment's counters, in the caller's transaction."""
    # Sorted: concurrent transactions take the rows' locks in one order, so never deadlock.
    with conn.cursor() as cur:
        cur.executemany(BUMP_METRIC.format(p="%s"), sorted(samples))
