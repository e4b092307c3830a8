"""SQLite: the Retention port (ended jobs due for removal, and forgetting them)."""

from __future__ import annotations

from collections.abc import Sequence

from sdapi.jobs import Job
from sdapi.queue.rows import (
    EXPIRABLE,
    EXPIRE,
    FORGET_EVENTS,
    FORGET_JOBS,
    job_from_row,
)
from sdapi.queue.sqlite.common import SQLiteBase


class SQLiteRetention(SQLiteBase):
    def expirable(self, *, finished_before: float | None, limit: int) -> list[Job]:
        cutoff = -1.0 if finished_before is None else finished_before
        rows = (
            self.db.connection()
            .execute(EXPIRABLE.format(p="?"), (self.clock(), cutoff, limit))
            .fetchall()
        )
        return [job_from_row(row) for row in rows]

    def expire(self, job_ids: Sequence[int]) -> None:
        with self.db.write() as conn:
            for job_id in job_ids:
                conn.execute(EXPIRE.format(p="?"), (job_id,))

    def forget(self, *, finished_before: float, limit: int) -> int:
        with self.db.write() as conn:
            conn.execute(FORGET_EVENTS.format(p="?"), (finished_before, limit))
            return conn.execute(FORGET_JOBS.format(p="?"), (finished_before, limit)).rowcount
