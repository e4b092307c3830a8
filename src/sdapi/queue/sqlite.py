"""The SQLite queue backend (the embedded default).

Every change of state is one conditional UPDATE whose WHERE lists the states the transition
table allows as sources, so a stale worker's late write simply matches no row.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence

from sdapi.database.sqlite import SQLiteDatabase
from sdapi.jobs import Job, QueueStats
from sdapi.metrics import Sample, webhook_attempt
from sdapi.queue.base import (
    ABANDONED_ERROR,
    DEADLINE_ERROR,
    WORKER_STALE_S,
    Clock,
    NewJob,
    WebhookEvent,
    WorkerInfo,
    attempt_outcome,
    blend_rate,
    enforce_caps,
    learned_seconds,
    split_expired,
)
from sdapi.queue.rows import (
    BUMP_METRIC,
    CANCEL_QUEUED,
    DUE_WEBHOOKS,
    ENDED,
    EXPIRABLE,
    EXPIRE,
    FAIL,
    FAIL_LATE,
    FORGET_EVENTS,
    FORGET_JOBS,
    JOB_WEBHOOK_STATUS,
    LATE_IDS,
    OWNER_LIVE,
    QUEUE_LIVE,
    READ_METRICS,
    RECENT,
    RECORD_WEBHOOK,
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
    webhook_event_args,
    webhook_record_args,
)

#: How many queued jobs a claim looks at to gather a batch of compatible ones.
CLAIM_WINDOW = 64


class SQLiteQueue:
    def __init__(self, db: SQLiteDatabase, *, max_attempts: int = 3, clock: Clock = time.time):
        self.db = db
        self.max_attempts = max_attempts
        self.clock = clock

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
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (cur.lastrowid,)).fetchone()
        return job_from_row(row)

    def get(self, job_id: int) -> Job | None:
        row = self.db.connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return job_from_row(row) if row else None

    def claim(
        self,
        worker_id: str,
        *,
        lease_s: float,
        limit: int = 1,
        models: Sequence[str] | None = None,
        batch_key: str | None = None,
    ) -> list[Job]:
        now = self.clock()
        model_sql, model_args = _claim_filter(models, batch_key)
        if not self._has_work(now, model_sql, model_args):
            return []  # idle polls stay read-only: no write lock, no fsync
        with self.db.write() as conn:
            self._reap_expired(conn, now)
            rows = conn.execute(
                f"SELECT id, batch_key FROM jobs WHERE status = 'queued' {model_sql}"
                " ORDER BY id LIMIT ?",
                (*model_args, CLAIM_WINDOW),
            ).fetchall()
            if not rows:
                return []
            key = rows[0]["batch_key"]
            ids = [r["id"] for r in rows if r["batch_key"] == key][:limit]
            lease_id = uuid.uuid4().hex
            marks = ",".join("?" * len(ids))
            conn.execute(
                f"UPDATE jobs SET status = 'processing', attempts = attempts + 1, lease_id = ?,"
                f" lease_expires_at = ?, worker_id = ?, started_at = ?, progress = 0"
                f" WHERE id IN ({marks}) AND status IN {TO_PROCESSING}",
                (lease_id, now + lease_s, worker_id, now, *ids),
            )
            claimed = conn.execute(
                f"SELECT * FROM jobs WHERE id IN ({marks}) ORDER BY id", ids
            ).fetchall()
        return [job_from_row(row) for row in claimed]

    def _ended(self, conn: sqlite3.Connection, job_ids: Iterable[int], now: float) -> None:
        """Outbox events and metrics of jobs that just ended, in the transaction that ended
        them: neither can be lost, nor counted twice."""
        for job_id in job_ids:
            conn.execute(WEBHOOK_EVENT.format(p="?"), webhook_event_args(job_id, now))
            row = conn.execute(ENDED.format(p="?"), (job_id,)).fetchone()
            _bump(conn, ended_samples(row))

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

    def _reap_expired(self, conn: sqlite3.Connection, now: float) -> None:
        """Expired leases (see `split_expired`), then queued jobs past their deadline."""
        rows = conn.execute(
            "SELECT id, attempts, cancel_requested FROM jobs"
            " WHERE status = 'processing' AND lease_expires_at < ?",
            (now,),
        ).fetchall()
        expired = split_expired([tuple(r) for r in rows], self.max_attempts)
        released = "lease_id = NULL, lease_expires_at = NULL"
        for job_id in expired.cancelled:
            conn.execute(
                f"UPDATE jobs SET status = 'cancelled', finished_at = ?, {released} WHERE id = ?",
                (now, job_id),
            )
        for job_id, attempts in expired.abandoned:
            conn.execute(
                f"UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, {released}"
                " WHERE id = ?",
                (ABANDONED_ERROR.format(attempts=attempts), now, job_id),
            )
        for job_id in expired.requeued:
            conn.execute(
                f"UPDATE jobs SET status = 'queued', {released}, worker_id = NULL, progress = 0"
                " WHERE id = ?",
                (job_id,),
            )
        late = [r[0] for r in conn.execute(LATE_IDS.format(p="?"), (now,))]
        conn.execute(FAIL_LATE.format(p="?"), (now, DEADLINE_ERROR, now))
        self._ended(conn, expired.ended + late, now)

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
        cost_seconds: float | None = None,
        call_rows: int = 1,
        nsfw: bool = False,
    ) -> bool:
        now = self.clock()
        with self.db.write() as conn:
            cur = conn.execute(
                SUCCEED.format(p="?"),
                (now, generation_seconds, nsfw, job_id, lease_id),
            )
            if cur.rowcount:
                seconds = learned_seconds(generation_seconds, cost_seconds)
                self._learn_rate(conn, job_id, seconds, call_rows, now)
                self._ended(conn, [job_id], now)
        return cur.rowcount == 1

    def _learn_rate(
        self, conn: sqlite3.Connection, job_id: int, seconds: float, rows: int, now: float
    ) -> None:
        """Blend the measurement into the job's batch-key rate and its model+task rate."""
        job = conn.execute(
            "SELECT batch_key, rate_key, work_units FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        measured = seconds / max(job["work_units"], 1e-9)
        for key, call_rows in ((job["batch_key"], rows), (job["rate_key"], 1)):
            row = conn.execute(
                "SELECT seconds_per_unit FROM rates WHERE rate_key = ?", (key,)
            ).fetchone()
            conn.execute(
                "INSERT INTO rates (rate_key, seconds_per_unit, samples, updated_at, call_rows)"
                " VALUES (?, ?, 1, ?, ?) ON CONFLICT (rate_key) DO UPDATE SET"
                " seconds_per_unit = excluded.seconds_per_unit, samples = samples + 1,"
                " updated_at = excluded.updated_at, call_rows = excluded.call_rows",
                (key, blend_rate(row[0] if row else None, measured), now, call_rows),
            )

    def fail(self, job_id: int, lease_id: str, *, error: str) -> bool:
        now = self.clock()
        with self.db.write() as conn:
            cur = conn.execute(FAIL.format(p="?"), (now, error, job_id, lease_id))
            if cur.rowcount:
                self._ended(conn, [job_id], now)
        return cur.rowcount == 1

    def release(self, lease_id: str) -> list[int]:
        self.stop_cancelled(lease_id)
        with self.db.write() as conn:
            ids = [
                r[0] for r in conn.execute("SELECT id FROM jobs WHERE lease_id = ?", (lease_id,))
            ]
            conn.execute(RELEASE.format(p="?"), (lease_id,))
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
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
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
        return sorted(ids)

    def recent(self, owner: str, *, limit: int) -> list[Job]:
        rows = self.db.connection().execute(RECENT.format(p="?"), (owner, limit)).fetchall()
        return [job_from_row(row) for row in rows]

    def running(self, *, limit: int) -> list[Job]:
        rows = self.db.connection().execute(RUNNING.format(p="?"), (limit,)).fetchall()
        return [job_from_row(row) for row in rows]

    def position(self, job_id: int) -> tuple[int, float] | None:
        row = (
            self.db.connection()
            .execute(
                "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND id < j.id) + 1,"
                " (SELECT COALESCE(SUM(work_units * (1 - progress)), 0) FROM jobs"
                "   WHERE (status = 'queued' AND id < j.id) OR status = 'processing')"
                " FROM jobs j WHERE j.id = ? AND j.status = 'queued'",
                (job_id,),
            )
            .fetchone()
        )
        return (row[0], row[1]) if row else None

    def stats(self) -> QueueStats:
        conn = self.db.connection()
        counts = dict.fromkeys(("queued", "processing"), 0)
        pending: dict[tuple[str, str], float] = {}
        for row in conn.execute(
            "SELECT status, batch_key, rate_key, COUNT(*), SUM(work_units * (1 - progress))"
            " FROM jobs WHERE status IN ('queued', 'processing')"
            " GROUP BY status, batch_key, rate_key"
        ):
            counts[row[0]] += row[3]
            key = (row[1], row[2])
            pending[key] = pending.get(key, 0.0) + (row[4] or 0.0)
        live = conn.execute(
            "SELECT COUNT(*) FROM workers WHERE seen_at >= ?", (self.clock() - WORKER_STALE_S,)
        ).fetchone()[0]
        return QueueStats(
            counts["queued"], counts["processing"], sum(pending.values()), live, pending
        )

    def rate(self, key: str) -> float | None:
        row = (
            self.db.connection()
            .execute("SELECT seconds_per_unit FROM rates WHERE rate_key = ?", (key,))
            .fetchone()
        )
        return row[0] if row else None

    def call_rows(self, batch_key: str) -> int:
        row = (
            self.db.connection()
            .execute("SELECT call_rows FROM rates WHERE rate_key = ?", (batch_key,))
            .fetchone()
        )
        return int(row[0]) if row else 1

    def wait_for_work(self, timeout: float) -> None:
        # SQLite cannot signal another process; the idle claim is a cheap indexed read.
        time.sleep(timeout)

    def claim_webhooks(self, *, limit: int, lease_s: float) -> list[WebhookEvent]:
        now = self.clock()
        conn = self.db.connection()
        if conn.execute(DUE_WEBHOOKS.format(p="?"), (now, 1)).fetchone() is None:
            return []  # nothing due: stay a read, as idle claims do
        with self.db.write() as conn:
            rows = conn.execute(DUE_WEBHOOKS.format(p="?"), (now, limit)).fetchall()
            events = [WebhookEvent(*row) for row in rows]
            for event in events:
                conn.execute(
                    "UPDATE webhook_events SET next_attempt_at = ? WHERE event_id = ?",
                    (now + lease_s, event.event_id),
                )
        return events

    def record_webhook(
        self, event_id: str, *, delivered: bool, error: str | None = None, retry_at: float | None
    ) -> None:
        event, job = webhook_record_args(event_id, delivered, error, retry_at, self.clock())
        with self.db.write() as conn:
            if conn.execute(RECORD_WEBHOOK.format(p="?"), event).rowcount:
                conn.execute(JOB_WEBHOOK_STATUS.format(p="?"), job)
                _bump(conn, webhook_attempt(attempt_outcome(delivered, retry_at)))

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

    def record_metrics(self, samples: Sequence[Sample]) -> None:
        with self.db.write() as conn:
            _bump(conn, samples)

    def metrics(self) -> list[Sample]:
        rows = self.db.connection().execute(READ_METRICS).fetchall()
        return [(row[0], row[1], row[2]) for row in rows]

    def register_worker(self, info: WorkerInfo) -> None:
        now = self.clock()
        with self.db.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (info.id, info.host, info.pid, info.device, info.model, info.state, now, now),
            )

    def worker_seen(self, worker_id: str, state: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                "UPDATE workers SET seen_at = ?, state = ? WHERE id = ?",
                (self.clock(), state, worker_id),
            )

    def remove_worker(self, worker_id: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def close(self) -> None:
        self.db.close()


def _bump(conn: sqlite3.Connection, samples: Sequence[Sample]) -> None:
    conn.executemany(BUMP_METRIC.format(p="?"), samples)


def _claim_filter(
    models: Sequence[str] | None, batch_key: str | None
) -> tuple[str, tuple[str, ...]]:
    """SQL narrowing a claim to the worker's models and, when gathering, one batch key."""
    sql, args = "", ()
    if models is not None:
        sql, args = f"AND model IN ({','.join('?' * len(models))})", tuple(models)
    if batch_key is not None:
        sql, args = f"{sql} AND batch_key = ?", (*args, batch_key)
    return sql, args
