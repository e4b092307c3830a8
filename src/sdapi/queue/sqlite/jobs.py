"""SQLite: the Jobs port (submitting, claiming, running, ending jobs, and where they stand)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable, Sequence

from sdapi.jobs import Job, QueueStats, Rendered
from sdapi.queue.base import (
    WORKER_STALE_S,
    Expired,
    Line,
    NewJob,
    enforce_caps,
    pick_batch,
)
from sdapi.queue.doorbell import JOBS, WORK
from sdapi.queue.rows import (
    AHEAD,
    CANCEL_QUEUED,
    CLAIM_COLUMNS,
    ENDED,
    FAIL,
    GET_JOB,
    LIVE_WORKERS,
    OWNER_LIVE,
    PENDING,
    QUEUE_LIVE,
    QUEUED_JOB,
    RECENT,
    RELEASE,
    RUNNING,
    SAME_TRACK,
    SUCCEED,
    TO_PROCESSING,
    WEBHOOK_EVENT,
    ended_samples,
    insert_sql,
    insert_values,
    job_from_row,
    line_of,
    pending_from_row,
    queue_stats,
    reap_expired,
    succeed_args,
    webhook_event_args,
)
from sdapi.queue.sqlite.common import CLAIM_WINDOW, SQLiteBase, bump


class SQLiteJobs(SQLiteBase):
    def _changed(self, job_ids: Iterable[int]) -> None:
        """Tell waiting requests that these jobs changed (called once their change committed)."""
        if ids := ",".join(str(job_id) for job_id in job_ids):
            self.bell.ring(JOBS, ids)

    def enqueue(self, new: NewJob) -> Job:
        with self.db.write() as conn:  # the write lock makes check-then-insert atomic
            if new.track_id is not None and new.dedupe_since is not None:
                row = conn.execute(
                    SAME_TRACK.format(p="?"), (new.owner, new.track_id, new.dedupe_since)
                ).fetchone()
                if row is not None:
                    return job_from_row(row)
            enforce_caps(
                new,
                lambda: conn.execute(OWNER_LIVE.format(p="?"), (new.owner,)).fetchone()[0],
                lambda: conn.execute(QUEUE_LIVE).fetchone()[0],
            )
            cur = conn.execute(insert_sql("?"), insert_values(new, self.clock()))
            row = conn.execute(GET_JOB.format(p="?"), (cur.lastrowid,)).fetchone()
        self.bell.ring(WORK, new.request.model)
        return job_from_row(row)

    def get(self, job_id: int) -> Job | None:
        row = self.db.connection().execute(GET_JOB.format(p="?"), (job_id,)).fetchone()
        return job_from_row(row) if row else None

    def claim(
        self,
        worker_id: str,
        *,
        lease_s: float,
        images: int = 1,
        models: Sequence[str] | None = None,
        batch_key: str | None = None,
    ) -> list[Job]:
        now = self.clock()
        model_sql, model_args = _claim_filter(models, batch_key)
        if not self._has_work(now, model_sql, model_args):
            return []  # idle polls stay read-only: no write lock, no fsync
        with self.db.write() as conn:
            reaped = self._reap_expired(conn, now)
            rows = conn.execute(
                f"SELECT {CLAIM_COLUMNS} FROM jobs WHERE status = 'queued' {model_sql}"
                " ORDER BY id LIMIT ?",
                (*model_args, CLAIM_WINDOW),
            ).fetchall()
            ids = pick_batch([tuple(r) for r in rows], images, gathering=batch_key is not None)
            marks = ",".join("?" * len(ids))
            conn.execute(
                f"UPDATE jobs SET status = 'processing', attempts = attempts + 1, lease_id = ?,"
                f" lease_expires_at = ?, worker_id = ?, started_at = ?, progress = 0"
                f" WHERE id IN ({marks}) AND status IN {TO_PROCESSING}",
                (uuid.uuid4().hex, now + lease_s, worker_id, now, *ids),
            )
            claimed = conn.execute(
                f"SELECT * FROM jobs WHERE id IN ({marks}) ORDER BY id", ids
            ).fetchall()
        if reaped.requeued:
            self.bell.ring(WORK)  # other idle workers may take them
        self._changed([*reaped.ended, *reaped.requeued, *ids])
        return [job_from_row(row) for row in claimed]

    def _ended(self, conn: sqlite3.Connection, job_ids: Iterable[int], now: float) -> None:
        """Outbox events and metrics of jobs that just ended, in the transaction that ended
        them: neither can be lost, nor counted twice."""
        for job_id in job_ids:
            conn.execute(WEBHOOK_EVENT.format(p="?"), webhook_event_args(job_id, now))
            row = conn.execute(ENDED.format(p="?"), (job_id,)).fetchone()
            bump(conn, ended_samples(row))

    def _has_work(self, now: float, model_sql: str, model_args: tuple[str, ...]) -> bool:
        row = (
            self.db.connection()
            .execute(
                f"SELECT 1 FROM jobs WHERE (status = 'queued' {model_sql})"
                " OR (status = 'processing' AND lease_expires_at < ?) LIMIT 1",
                (*model_args, now),
            )
            .fetchone()
        )
        return row is not None

    def _reap_expired(self, conn: sqlite3.Connection, now: float) -> Expired:
        """Expired leases and passed deadlines (rows.reap_expired); the late jobs count among
        those that ended, as far as those waiting on them care."""
        expired, late = reap_expired(conn, "?", now, self.max_attempts)
        self._ended(conn, expired.ended + late, now)
        expired.cancelled.extend(late)
        return expired

    def heartbeat(self, lease_id: str, *, lease_s: float, progress: float | None = None) -> int:
        now = self.clock()
        with self.db.write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET lease_expires_at = ?, progress = COALESCE(?, progress)"
                " WHERE lease_id = ? AND status = 'processing'",
                (now + lease_s, progress, lease_id),
            )
        return cur.rowcount

    def complete(
        self,
        job_id: int,
        lease_id: str,
        *,
        generation_seconds: float,
        call_size: int | None = None,
        nsfw: bool = False,
        rendered: Rendered | None = None,
    ) -> bool:
        now = self.clock()
        with self.db.write() as conn:
            cur = conn.execute(
                SUCCEED.format(p="?"),
                succeed_args(now, generation_seconds, nsfw, call_size, rendered, job_id, lease_id),
            )
            if cur.rowcount:
                self._ended(conn, [job_id], now)
        self._changed([job_id] if cur.rowcount else [])
        return cur.rowcount == 1

    def fail(self, job_id: int, lease_id: str, *, error: str) -> bool:
        now = self.clock()
        with self.db.write() as conn:
            cur = conn.execute(FAIL.format(p="?"), (now, error, job_id, lease_id))
            if cur.rowcount:
                self._ended(conn, [job_id], now)
        self._changed([job_id] if cur.rowcount else [])
        return cur.rowcount == 1

    def release(self, lease_id: str) -> list[int]:
        self.stop_cancelled(lease_id)
        with self.db.write() as conn:
            ids = [
                r[0] for r in conn.execute("SELECT id FROM jobs WHERE lease_id = ?", (lease_id,))
            ]
            conn.execute(RELEASE.format(p="?"), (lease_id,))
        self.bell.ring(WORK)  # idle workers may take them at once
        self._changed(ids)
        return sorted(ids)

    def cancel(self, job_id: int) -> Job | None:
        now = self.clock()
        with self.db.write() as conn:
            if conn.execute(CANCEL_QUEUED.format(p="?"), (now, job_id)).rowcount:
                self._ended(conn, [job_id], now)
            conn.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'processing'",
                (job_id,),
            )
            row = conn.execute(GET_JOB.format(p="?"), (job_id,)).fetchone()
        self._changed([job_id] if row else [])
        return job_from_row(row) if row else None

    def stop_cancelled(self, lease_id: str) -> list[int]:
        held = "lease_id = ? AND status = 'processing' AND cancel_requested = 1"
        conn = self.db.connection()
        if conn.execute(f"SELECT 1 FROM jobs WHERE {held}", (lease_id,)).fetchone() is None:
            return []  # the common case stays a read: no write lock every second
        now = self.clock()
        with self.db.write() as conn:
            ids = [r[0] for r in conn.execute(f"SELECT id FROM jobs WHERE {held}", (lease_id,))]
            conn.execute(
                f"UPDATE jobs SET status = 'cancelled', finished_at = ?, lease_id = NULL,"
                f" lease_expires_at = NULL WHERE {held}",
                (now, lease_id),
            )
            self._ended(conn, ids, now)
        self._changed(ids)
        return sorted(ids)

    def recent(self, owner: str, *, limit: int) -> list[Job]:
        rows = self.db.connection().execute(RECENT.format(p="?"), (owner, limit)).fetchall()
        return [job_from_row(row) for row in rows]

    def running(self, *, limit: int) -> list[Job]:
        rows = self.db.connection().execute(RUNNING.format(p="?"), (limit,)).fetchall()
        return [job_from_row(row) for row in rows]

    def position(self, job_id: int) -> Line | None:
        conn = self.db.connection()
        if conn.execute(QUEUED_JOB.format(p="?"), (job_id,)).fetchone() is None:
            return None
        rows = conn.execute(AHEAD.format(p="?"), (job_id,)).fetchall()
        return line_of([pending_from_row(row) for row in rows], self._live_workers())

    def stats(self) -> QueueStats:
        groups = [pending_from_row(row) for row in self.db.connection().execute(PENDING)]
        return queue_stats(groups, self._live_workers())

    def _live_workers(self) -> int:
        cutoff = self.clock() - WORKER_STALE_S
        return int(
            self.db.connection().execute(LIVE_WORKERS.format(p="?"), (cutoff,)).fetchone()[0]
        )

    def wait_for_work(self, timeout: float) -> None:
        self.bell.wait(WORK, timeout)

    def wait_for_changes(self, timeout: float) -> frozenset[int] | None:
        messages = self.bell.wait(JOBS, timeout)
        if messages is None:
            return None
        return frozenset(int(i) for message in messages for i in message.split(",") if i)


def _claim_filter(
    models: Sequence[str] | None, batch_key: str | None
) -> tuple[str, tuple[str, ...]]:
    """SQL narrowing a claim to the worker's models and, when gathering, one batch key."""
    sql, args = "", tuple[str, ...]()
    if models is not None:
        sql, args = f"AND model IN ({','.join('?' * len(models))})", tuple(models)
    if batch_key is not None:
        sql, args = f"{sql} AND batch_key = ?", (*args, batch_key)
    return sql, args
