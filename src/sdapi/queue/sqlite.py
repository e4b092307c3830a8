"""The SQLite queue backend (the embedded default).

Every change of state is one conditional UPDATE whose WHERE lists the states the transition
table allows as sources, so a stale worker's late write simply matches no row.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence

from sdapi.costs import OBSERVATIONS, Call, Cost
from sdapi.database.sqlite import SQLiteDatabase
from sdapi.jobs import Job, QueueStats, Rendered
from sdapi.metrics import Sample, webhook_attempt
from sdapi.queue.base import (
    ABANDONED_ERROR,
    ANY_KEY,
    DEADLINE_ERROR,
    WORKER_STALE_S,
    Clock,
    Expired,
    Learned,
    Line,
    NewJob,
    WebhookEvent,
    WorkerInfo,
    attempt_outcome,
    enforce_caps,
    pick_batch,
    relearn,
    split_expired,
)
from sdapi.queue.doorbell import JOBS, WORK, Doorbell, folder_for
from sdapi.queue.rows import (
    AHEAD,
    BUMP_METRIC,
    CANCEL_QUEUED,
    CLAIM_COLUMNS,
    COSTS,
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
    LIVE_WORKERS,
    OWNER_LIVE,
    PENDING,
    QUEUE_LIVE,
    READ_METRICS,
    RECENT,
    RECORD_TIMING,
    RECORD_WEBHOOK,
    RELEASE,
    RUNNING,
    SAME_TRACK,
    SUCCEED,
    TIMINGS,
    TO_PROCESSING,
    TRIM_TIMINGS,
    UPSERT_COST,
    WEBHOOK_EVENT,
    cost_rows,
    ended_samples,
    insert_sql,
    insert_values,
    job_from_row,
    learned_from_row,
    line_of,
    pending_from_row,
    queue_stats,
    succeed_args,
    webhook_event_args,
    webhook_record_args,
)

#: How many queued jobs a claim looks at to gather a batch of compatible ones.
CLAIM_WINDOW = 64
QUEUED_JOB = "SELECT 1 FROM jobs WHERE id = ? AND status = 'queued'"


class SQLiteQueue:
    def __init__(self, db: SQLiteDatabase, *, max_attempts: int = 3, clock: Clock = time.time):
        self.db = db
        self.max_attempts = max_attempts
        self.clock = clock
        #: Wakes waiting workers and requests in every process sharing the file (after commits).
        self.bell = Doorbell(folder_for(db.path))

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
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (cur.lastrowid,)).fetchone()
        self.bell.ring(WORK, new.request.model)
        return job_from_row(row)

    def get(self, job_id: int) -> Job | None:
        row = self.db.connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
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

    def _reap_expired(self, conn: sqlite3.Connection, now: float) -> Expired:
        """Expired leases (see `split_expired`), then queued jobs past their deadline (added
        to what ended)."""
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
        expired.cancelled.extend(late)  # ended, as far as those waiting on them care
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

    def record_call(
        self, batch_key: str, model_key: str, call: Call, *, cap: int, prior: Cost
    ) -> None:
        now = self.clock()
        with self.db.write() as conn:
            for key in (batch_key, model_key, ANY_KEY):
                conn.execute(
                    RECORD_TIMING.format(p="?"), (key, call.units, call.steps, call.seconds, now)
                )
                conn.execute(TRIM_TIMINGS.format(p="?"), (key, key, OBSERVATIONS))

            def history(key: str) -> list[Call]:
                return [Call(*row) for row in conn.execute(TIMINGS.format(p="?"), (key,))]

            learned = relearn(history, batch_key, model_key, prior)
            conn.executemany(UPSERT_COST.format(p="?"), cost_rows(learned, batch_key, cap, now))

    def costs(self, keys: Sequence[str]) -> dict[str, Learned]:
        if not keys:
            return {}
        rows = (
            self.db.connection()
            .execute(f"{COSTS} WHERE rate_key IN ({','.join('?' * len(keys))})", tuple(keys))
            .fetchall()
        )
        return {row["rate_key"]: learned_from_row(row) for row in rows}

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
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
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
        if conn.execute(QUEUED_JOB, (job_id,)).fetchone() is None:
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
        self.bell.close()
        self.db.close()


def _bump(conn: sqlite3.Connection, samples: Sequence[Sample]) -> None:
    conn.executemany(BUMP_METRIC.format(p="?"), samples)


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
