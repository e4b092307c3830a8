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
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from sdapi.database.postgres import PostgresDatabase, reason
from sdapi.jobs import Job, QueueStats
from sdapi.metrics import Sample, webhook_attempt
from sdapi.queue.base import (
    ABANDONED_ERROR,
    DEADLINE_ERROR,
    RATE_ALPHA,
    WORKER_STALE_S,
    Clock,
    NewJob,
    WebhookEvent,
    WorkerInfo,
    attempt_outcome,
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

log = logging.getLogger(__name__)

#: How many queued jobs a claim looks at to gather a batch of compatible ones (as SQLite).
CLAIM_WINDOW = 64
#: The LISTEN/NOTIFY channel that says "a job may be waiting".
CHANNEL = "sdapi_jobs"

Connection = psycopg.Connection[dict[str, Any]]


class PostgresQueue:
    def __init__(
        self, db: PostgresDatabase, *, max_attempts: int = 3, clock: Clock = time.time
    ) -> None:
        self.db = db
        self.max_attempts = max_attempts
        self.clock = clock
        #: Opened by the first `wait_for_work`: API replicas never wait, so never hold one.
        self._listener: psycopg.Connection[Any] | None = None
        self._listen_lock = threading.Lock()

    def enqueue(self, new: NewJob) -> Job:
        with self.db.transaction() as conn:
            if new.track_id is not None and new.dedupe_since is not None:
                earlier = _same_track(conn, new)
                if earlier is not None:
                    return earlier
            _enforce_caps(conn, new)
            row = conn.execute(
                insert_sql("%s") + " RETURNING *", insert_values(new, self.clock())
            ).fetchone()
            # Delivered when the INSERT commits, never before: a woken worker finds the job.
            _notify(conn, new.request.model)
        assert row is not None  # INSERT ... RETURNING always returns the row
        return job_from_row(row)

    def get(self, job_id: int) -> Job | None:
        with self.db.connection() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
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
        with self.db.connection() as conn:
            if not _has_work(conn, now, model_sql, model_args):
                return []  # idle polls stay one read: no transaction, no row locks
            with conn.transaction():
                if self._reap_expired(conn, now):
                    _notify(conn, "")  # jobs went back in line: other idle workers may take them
                ids = _pick(conn, model_sql, model_args, limit)
                if not ids:
                    return []
                rows = conn.execute(
                    f"UPDATE jobs SET status = 'processing', attempts = attempts + 1,"
                    f" lease_id = %s, lease_expires_at = %s, worker_id = %s, started_at = %s,"
                    f" progress = 0 WHERE id = ANY(%s) AND status IN {TO_PROCESSING} RETURNING *",
                    (uuid.uuid4().hex, now + lease_s, worker_id, now, ids),
                ).fetchall()
        return sorted((job_from_row(row) for row in rows), key=lambda job: job.id)

    def _reap_expired(self, conn: Connection, now: float) -> int:
        """Expired leases (see `split_expired`), then queued jobs past their deadline.

        Returns how many went back in line. SKIP LOCKED: a lease another claimer is reaping, or
        its holder is renewing right now, is left to them instead of waited for.
        """
        rows = conn.execute(
            "SELECT id, attempts, cancel_requested FROM jobs"
            " WHERE status = 'processing' AND lease_expires_at < %s"
            " ORDER BY id FOR UPDATE SKIP LOCKED",
            (now,),
        ).fetchall()
        expired = split_expired(
            [(r["id"], r["attempts"], r["cancel_requested"]) for r in rows], self.max_attempts
        )
        released = "lease_id = NULL, lease_expires_at = NULL"
        if expired.cancelled:
            conn.execute(
                f"UPDATE jobs SET status = 'cancelled', finished_at = %s, {released}"
                " WHERE id = ANY(%s)",
                (now, expired.cancelled),
            )
        for job_id, attempts in expired.abandoned:
            conn.execute(
                f"UPDATE jobs SET status = 'failed', error = %s, finished_at = %s, {released}"
                " WHERE id = %s",
                (ABANDONED_ERROR.format(attempts=attempts), now, job_id),
            )
        if expired.requeued:
            conn.execute(
                f"UPDATE jobs SET status = 'queued', {released}, worker_id = NULL, progress = 0"
                " WHERE id = ANY(%s)",
                (expired.requeued,),
            )
        late = [r["id"] for r in conn.execute(LATE_IDS.format(p="%s") + " FOR UPDATE", (now,))]
        if late:
            conn.execute(FAIL_LATE.format(p="%s"), (now, DEADLINE_ERROR, now))
        _ended(conn, expired.ended + late, now)
        return len(expired.requeued)

    def heartbeat(self, lease_id: str, *, lease_s: float, progress: float | None = None) -> int:
        now = self.clock()
        with self.db.connection() as conn:
            cur = conn.execute(
                "UPDATE jobs SET lease_expires_at = %s,"
                " progress = COALESCE(%s::double precision, progress)"
                " WHERE lease_id = %s AND status = 'processing'",
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
        with self.db.transaction() as conn:
            done = conn.execute(
                SUCCEED.format(p="%s") + " RETURNING batch_key, rate_key, work_units",
                (now, generation_seconds, nsfw, job_id, lease_id),
            ).fetchone()
            if done is not None:
                cost = learned_seconds(generation_seconds, cost_seconds)
                measured = cost / max(done["work_units"], 1e-9)
                _learn_rate(conn, done["batch_key"], measured, call_rows, now)
                _learn_rate(conn, done["rate_key"], measured, 1, now)
                _ended(conn, [job_id], now)
        return done is not None

    def fail(self, job_id: int, lease_id: str, *, error: str) -> bool:
        now = self.clock()
        with self.db.transaction() as conn:
            cur = conn.execute(FAIL.format(p="%s"), (now, error, job_id, lease_id))
            if cur.rowcount:
                _ended(conn, [job_id], now)
        return cur.rowcount == 1

    def release(self, lease_id: str) -> list[int]:
        self.stop_cancelled(lease_id)
        with self.db.transaction() as conn:
            rows = conn.execute(RELEASE.format(p="%s") + " RETURNING id", (lease_id,)).fetchall()
            _notify(conn, "")  # idle workers may take them at once
        return sorted(row["id"] for row in rows)

    def cancel(self, job_id: int) -> Job | None:
        now = self.clock()
        with self.db.transaction() as conn:
            if conn.execute(CANCEL_QUEUED.format(p="%s"), (now, job_id)).rowcount:
                _ended(conn, [job_id], now)
            row = conn.execute(
                "UPDATE jobs SET cancel_requested = (status = 'processing') OR cancel_requested"
                " WHERE id = %s RETURNING *",
                (job_id,),
            ).fetchone()
        return job_from_row(row) if row else None

    def stop_cancelled(self, lease_id: str) -> list[int]:
        now = self.clock()
        with self.db.transaction() as conn:
            rows = conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = %s, lease_id = NULL,"
                " lease_expires_at = NULL"
                " WHERE lease_id = %s AND status = 'processing' AND cancel_requested"
                " RETURNING id",
                (now, lease_id),
            ).fetchall()
            ids = sorted(row["id"] for row in rows)
            _ended(conn, ids, now)
        return ids

    def recent(self, owner: str, *, limit: int) -> list[Job]:
        with self.db.connection() as conn:
            rows = conn.execute(RECENT.format(p="%s"), (owner, limit)).fetchall()
        return [job_from_row(row) for row in rows]

    def running(self, *, limit: int) -> list[Job]:
        with self.db.connection() as conn:
            rows = conn.execute(RUNNING.format(p="%s"), (limit,)).fetchall()
        return [job_from_row(row) for row in rows]

    def position(self, job_id: int) -> tuple[int, float] | None:
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND id < j.id) + 1"
                "   AS place,"
                " (SELECT COALESCE(SUM(work_units * (1 - progress)), 0) FROM jobs"
                "   WHERE (status = 'queued' AND id < j.id) OR status = 'processing') AS ahead"
                " FROM jobs j WHERE j.id = %s AND j.status = 'queued'",
                (job_id,),
            ).fetchone()
        return (row["place"], row["ahead"]) if row else None

    def stats(self) -> QueueStats:
        counts = dict.fromkeys(("queued", "processing"), 0)
        pending: dict[tuple[str, str], float] = {}
        with self.db.connection() as conn:
            for row in conn.execute(
                "SELECT status, batch_key, rate_key, COUNT(*) AS n,"
                " SUM(work_units * (1 - progress)) AS work FROM jobs"
                " WHERE status IN ('queued', 'processing') GROUP BY status, batch_key, rate_key"
            ):
                counts[row["status"]] += row["n"]
                key = (row["batch_key"], row["rate_key"])
                pending[key] = pending.get(key, 0.0) + (row["work"] or 0.0)
            live = conn.execute(
                "SELECT COUNT(*) AS n FROM workers WHERE seen_at >= %s",
                (self.clock() - WORKER_STALE_S,),
            ).fetchone()
        assert live is not None  # COUNT(*) always returns a row
        return QueueStats(
            counts["queued"], counts["processing"], sum(pending.values()), live["n"], pending
        )

    def rate(self, key: str) -> float | None:
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT seconds_per_unit FROM rates WHERE rate_key = %s", (key,)
            ).fetchone()
        return row["seconds_per_unit"] if row else None

    def call_rows(self, batch_key: str) -> int:
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT call_rows FROM rates WHERE rate_key = %s", (batch_key,)
            ).fetchone()
        return int(row["call_rows"]) if row else 1

    def wait_for_work(self, timeout: float) -> None:
        """Block until a NOTIFY arrives on the LISTEN connection or `timeout` passes.

        Never raises for a database problem: a worker's idle wait is not where an outage should
        kill it (its next claim reports the outage). A lost LISTEN connection is dropped and
        opened again on the next call; meanwhile the wait degrades to a plain sleep (polling).
        """
        timeout = max(0.0, timeout)
        deadline = time.monotonic() + timeout
        # One waiter at a time on the one LISTEN connection; another thread waits its turn,
        # which for it is the same as sleeping out its timeout.
        if not self._listen_lock.acquire(timeout=timeout):
            return
        try:
            if self._listener is None:
                if self._start_listening(timeout):
                    # Whatever was enqueued before LISTEN took effect sent us no wake-up:
                    # return so the caller looks at the queue once more before really waiting.
                    return
            elif self._await_notify(self._listener, deadline):
                return
            time.sleep(max(0.0, deadline - time.monotonic()))
        finally:
            self._listen_lock.release()

    def _start_listening(self, timeout: float) -> bool:
        try:
            self._listener = self.db.listen_connection(CHANNEL, timeout=timeout)
        except psycopg.Error as exc:
            log.warning("cannot LISTEN for new jobs (polling until it can): %s", reason(exc))
            return False
        return True

    def _await_notify(self, conn: psycopg.Connection[Any], deadline: float) -> bool:
        """Wait on `conn` until a notification or the deadline; False if the connection broke."""
        try:
            remaining = max(0.0, deadline - time.monotonic())
            # list(): each notifies() generator must run to its end, as it holds the
            # connection's lock until then.
            if list(conn.notifies(timeout=remaining, stop_after=1)):
                # Swallow the wake-ups queued behind this one (a burst of enqueues): one look
                # at the queue answers them all.
                for _ in conn.notifies(timeout=0):
                    pass
        except psycopg.Error as exc:
            log.warning("lost the LISTEN connection (will reconnect): %s", reason(exc))
            self._drop_listener()
            return False
        return True

    def _drop_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # already broken: closing is all we want
                conn.close()

    def claim_webhooks(self, *, limit: int, lease_s: float) -> list[WebhookEvent]:
        now = self.clock()
        with self.db.transaction() as conn:
            # SKIP LOCKED: API replicas dispatching side by side never take the same event.
            rows = conn.execute(
                DUE_WEBHOOKS.format(p="%s") + " FOR UPDATE SKIP LOCKED", (now, limit)
            ).fetchall()
            events = [WebhookEvent(**row) for row in rows]
            if events:
                conn.execute(
                    "UPDATE webhook_events SET next_attempt_at = %s WHERE event_id = ANY(%s)",
                    (now + lease_s, [e.event_id for e in events]),
                )
        return events

    def record_webhook(
        self, event_id: str, *, delivered: bool, error: str | None = None, retry_at: float | None
    ) -> None:
        event, job = webhook_record_args(event_id, delivered, error, retry_at, self.clock())
        with self.db.transaction() as conn:
            if conn.execute(RECORD_WEBHOOK.format(p="%s"), event).rowcount:
                conn.execute(JOB_WEBHOOK_STATUS.format(p="%s"), job)
                _bump(conn, webhook_attempt(attempt_outcome(delivered, retry_at)))

    def expirable(self, *, finished_before: float | None, limit: int) -> list[Job]:
        cutoff = -1.0 if finished_before is None else finished_before
        with self.db.connection() as conn:
            rows = conn.execute(EXPIRABLE.format(p="%s"), (self.clock(), cutoff, limit)).fetchall()
        return [job_from_row(row) for row in rows]

    def expire(self, job_ids: Sequence[int]) -> None:
        with self.db.transaction() as conn:
            for job_id in job_ids:
                conn.execute(EXPIRE.format(p="%s"), (job_id,))

    def forget(self, *, finished_before: float, limit: int) -> int:
        with self.db.transaction() as conn:
            conn.execute(FORGET_EVENTS.format(p="%s"), (finished_before, limit))
            return conn.execute(FORGET_JOBS.format(p="%s"), (finished_before, limit)).rowcount

    def record_metrics(self, samples: Sequence[Sample]) -> None:
        with self.db.transaction() as conn:
            _bump(conn, samples)

    def metrics(self) -> list[Sample]:
        with self.db.connection() as conn:
            rows = conn.execute(READ_METRICS).fetchall()
        return [(row["name"], row["labels"], row["value"]) for row in rows]

    def register_worker(self, info: WorkerInfo) -> None:
        now = self.clock()
        with self.db.connection() as conn:
            # A restarted worker with the same id starts afresh, as SQLite's INSERT OR REPLACE.
            conn.execute(
                "INSERT INTO workers (id, host, pid, device, model, state, started_at, seen_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
                " device = excluded.device, model = excluded.model, state = excluded.state,"
                " started_at = excluded.started_at, seen_at = excluded.seen_at",
                (info.id, info.host, info.pid, info.device, info.model, info.state, now, now),
            )

    def worker_seen(self, worker_id: str, state: str) -> None:
        with self.db.connection() as conn:
            conn.execute(
                "UPDATE workers SET seen_at = %s, state = %s WHERE id = %s",
                (self.clock(), state, worker_id),
            )

    def remove_worker(self, worker_id: str) -> None:
        with self.db.connection() as conn:
            conn.execute("DELETE FROM workers WHERE id = %s", (worker_id,))

    def close(self) -> None:
        with self._listen_lock:  # waits out a wait_for_work in flight (bounded by its timeout)
            self._drop_listener()
        self.db.close()


def _ended(conn: Connection, job_ids: Iterable[int], now: float) -> None:
    """Outbox events and metrics of jobs that just ended, in the transaction that ended them:
    neither can be lost, nor counted twice."""
    for job_id in job_ids:
        conn.execute(WEBHOOK_EVENT.format(p="%s"), webhook_event_args(job_id, now))
        row = conn.execute(ENDED.format(p="%s"), (job_id,)).fetchone()
        _bump(conn, ended_samples(row))


def _bump(conn: Connection, samples: Sequence[Sample]) -> None:
    # Sorted: concurrent transactions take the rows' locks in one order, so never deadlock.
    with conn.cursor() as cur:
        cur.executemany(BUMP_METRIC.format(p="%s"), sorted(samples))


def _same_track(conn: Connection, new: NewJob) -> Job | None:
    """The owner's earlier job with this track_id; a transaction lock on (owner, track_id)
    makes the check and the INSERT that may follow one step for concurrent submitters."""
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{new.owner}\n{new.track_id}",)
    )
    row = conn.execute(
        SAME_TRACK.format(p="%s"), (new.owner, new.track_id, new.dedupe_since)
    ).fetchone()
    return job_from_row(row) if row else None


def _enforce_caps(conn: Connection, new: NewJob) -> None:
    """The owner's cap is exact: a transaction lock on the owner makes count-then-insert one
    step for its concurrent submissions. The whole queue's cap is a guard against floods, where
    a few jobs over it under a burst do no harm, so it takes no global lock."""
    if new.owner_cap is not None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))", (new.owner,))

    def count(sql: str, *args: Any) -> int:
        row = conn.execute(sql, args).fetchone()
        return int(row["n"]) if row else 0

    enforce_caps(
        new, lambda: count(OWNER_LIVE.format(p="%s"), new.owner), lambda: count(QUEUE_LIVE)
    )


def _has_work(conn: Connection, now: float, model_sql: str, model_args: tuple[Any, ...]) -> bool:
    row = conn.execute(
        f"SELECT 1 FROM jobs WHERE (status = 'queued' {model_sql})"
        " OR (status = 'processing' AND lease_expires_at < %s) LIMIT 1",
        (*model_args, now),
    ).fetchone()
    return row is not None


def _pick(conn: Connection, model_sql: str, model_args: tuple[Any, ...], limit: int) -> list[int]:
    """Lock and return up to `limit` ids sharing the oldest free job's batch key (in line order).

    The head is the oldest queued job no other claimer holds; the batch is gathered from the
    CLAIM_WINDOW queued jobs starting at it, as SQLite gathers from the front of the line.
    """
    head = conn.execute(
        f"SELECT id, batch_key FROM jobs WHERE status = 'queued' {model_sql}"
        " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
        model_args,
    ).fetchone()
    if head is None:
        return []
    rows = conn.execute(
        f"SELECT id FROM jobs WHERE status = 'queued' AND batch_key = %s AND id IN ("
        f"   SELECT id FROM jobs WHERE status = 'queued' AND id >= %s {model_sql}"
        f"   ORDER BY id LIMIT %s)"
        f" ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
        (head["batch_key"], head["id"], *model_args, CLAIM_WINDOW, limit),
    ).fetchall()
    return [row["id"] for row in rows]


def _learn_rate(conn: Connection, key: str, measured: float, rows: int, now: float) -> None:
    """Blend the measurement into the stored rate, as `blend_rate` does, in one statement.

    The blend happens in SQL on the locked row: two workers finishing jobs of the same model at
    once both count, where read-then-write in Python would lose one of them.
    """
    conn.execute(
        "INSERT INTO rates (rate_key, seconds_per_unit, samples, updated_at, call_rows)"
        " VALUES (%s, %s, 1, %s, %s)"
        " ON CONFLICT (rate_key) DO UPDATE SET"
        " seconds_per_unit = %s * rates.seconds_per_unit + %s * excluded.seconds_per_unit,"
        " samples = rates.samples + 1, updated_at = excluded.updated_at,"
        " call_rows = excluded.call_rows",
        (key, measured, now, rows, 1 - RATE_ALPHA, RATE_ALPHA),
    )


def _notify(conn: Connection, payload: str) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def _claim_filter(
    models: Sequence[str] | None, batch_key: str | None
) -> tuple[str, tuple[Any, ...]]:
    """SQL narrowing a claim to the worker's models and, when gathering, one batch key."""
    sql, args = "", ()
    if models is not None:
        sql, args = "AND model = ANY(%s)", (list(models),)
    if batch_key is not None:
        sql, args = f"{sql} AND batch_key = %s", (*args, batch_key)
    return sql, args
