"""PostgreSQL: the Jobs port (submitting, claiming, running, ending jobs, and where they stand)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sdapi.jobs import Job, QueueStats, Rendered
from sdapi.queue.base import (
    WORKER_STALE_S,
    Line,
    NewJob,
    enforce_caps,
    pick_batch,
)
from sdapi.queue.postgres.common import (
    CHANGES,
    CHANNEL,
    CLAIM_WINDOW,
    Connection,
    PostgresBase,
    bump,
)
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


class PostgresJobs(PostgresBase):
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
            row = conn.execute(GET_JOB.format(p="%s"), (job_id,)).fetchone()
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
        with self.db.connection() as conn:
            if not _has_work(conn, now, model_sql, model_args):
                return []  # idle polls stay one read: no transaction, no row locks
            with conn.transaction():
                if self._reap_expired(conn, now):
                    _notify(conn, "")  # jobs went back in line: other idle workers may take them
                ids = _pick(conn, model_sql, model_args, images, batch_key is not None)
                if not ids:
                    return []
                rows = conn.execute(
                    f"UPDATE jobs SET status = 'processing', attempts = attempts + 1,"
                    f" lease_id = %s, lease_expires_at = %s, worker_id = %s, started_at = %s,"
                    f" progress = 0 WHERE id = ANY(%s) AND status IN {TO_PROCESSING} RETURNING *",
                    (uuid.uuid4().hex, now + lease_s, worker_id, now, ids),
                ).fetchall()
                _changed(conn, ids)
        return sorted((job_from_row(row) for row in rows), key=lambda job: job.id)

    def _reap_expired(self, conn: Connection, now: float) -> int:
        """Expired leases and passed deadlines (rows.reap_expired); how many went back in line.
        SKIP LOCKED: a lease another claimer is reaping, or its holder is renewing right now, is
        left to them instead of waited for."""
        locks = (" FOR UPDATE SKIP LOCKED", " FOR UPDATE")
        expired, late = reap_expired(conn, "%s", now, self.max_attempts, locks)
        _ended(conn, expired.ended + late, now)
        _changed(conn, expired.requeued)
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
        call_size: int | None = None,
        nsfw: bool = False,
        rendered: Rendered | None = None,
    ) -> bool:
        now = self.clock()
        with self.db.transaction() as conn:
            cur = conn.execute(
                SUCCEED.format(p="%s"),
                succeed_args(now, generation_seconds, nsfw, call_size, rendered, job_id, lease_id),
            )
            if cur.rowcount:
                _ended(conn, [job_id], now)
        return cur.rowcount == 1

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
            _changed(conn, [row["id"] for row in rows])
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
            _changed(conn, [job_id] if row else [])
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

    def position(self, job_id: int) -> Line | None:
        with self.db.connection() as conn:
            queued = conn.execute(QUEUED_JOB.format(p="%s"), (job_id,)).fetchone()
            if queued is None:
                return None
            rows = conn.execute(AHEAD.format(p="%s"), (job_id,)).fetchall()
            live = _live_workers(conn, self.clock())
        return line_of([pending_from_row(row) for row in rows], live)

    def stats(self) -> QueueStats:
        with self.db.connection() as conn:
            groups = [pending_from_row(row) for row in conn.execute(PENDING)]
            live = _live_workers(conn, self.clock())
        return queue_stats(groups, live)

    def wait_for_work(self, timeout: float) -> None:
        """Block until a NOTIFY on CHANNEL arrives or `timeout` passes (see Listener)."""
        self.work_listener.wait(timeout)

    def wait_for_changes(self, timeout: float) -> frozenset[int] | None:
        payloads = self.changes_listener.wait(timeout)
        if payloads is None:
            return None
        return frozenset(int(i) for payload in payloads for i in payload.split(",") if i)


def _ended(conn: Connection, job_ids: Iterable[int], now: float) -> None:
    """Outbox events and metrics of jobs that just ended, in the transaction that ended them:
    neither can be lost, nor counted twice; and the news for requests waiting on them."""
    job_ids = list(job_ids)
    for job_id in job_ids:
        conn.execute(WEBHOOK_EVENT.format(p="%s"), webhook_event_args(job_id, now))
        row = conn.execute(ENDED.format(p="%s"), (job_id,)).fetchone()
        assert row is not None  # the job just ended in this transaction
        bump(conn, ended_samples(row))
    _changed(conn, job_ids)


def _live_workers(conn: Connection, now: float) -> int:
    row = conn.execute(LIVE_WORKERS.format(p="%s"), (now - WORKER_STALE_S,)).fetchone()
    assert row is not None  # COUNT(*) always returns a row
    return int(row["n"])


def _changed(conn: Connection, job_ids: Sequence[int]) -> None:
    """Tell waiting requests these jobs changed; delivered when the transaction commits."""
    if job_ids:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANGES, ",".join(map(str, job_ids))))


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


def _pick(
    conn: Connection, model_sql: str, model_args: tuple[Any, ...], images: int, gathering: bool
) -> list[int]:
    """Lock and return the ids of a batch (`pick_batch`) sharing the oldest free job's batch key.

    The head is the oldest queued job no other claimer holds; the batch is gathered from the
    CLAIM_WINDOW queued jobs starting at it, as SQLite gathers from the front of the line. As
    every job has an image at least, no more than `images` rows can fit: no more are locked.
    """
    head = conn.execute(
        f"SELECT id, batch_key FROM jobs WHERE status = 'queued' {model_sql}"
        " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
        model_args,
    ).fetchone()
    if head is None:
        return []
    window = conn.execute(
        f"SELECT {CLAIM_COLUMNS} FROM jobs WHERE status = 'queued' AND batch_key = %s AND id IN ("
        f"   SELECT id FROM jobs WHERE status = 'queued' AND id >= %s {model_sql}"
        f"   ORDER BY id LIMIT %s)"
        f" ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
        (head["batch_key"], head["id"], *model_args, CLAIM_WINDOW, max(images, 1)),
    ).fetchall()
    rows = [(row["id"], row["batch_key"], row["images"]) for row in window]
    return pick_batch(rows, images, gathering)


def _notify(conn: Connection, payload: str) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def _claim_filter(
    models: Sequence[str] | None, batch_key: str | None
) -> tuple[str, tuple[Any, ...]]:
    """SQL narrowing a claim to the worker's models and, when gathering, one batch key."""
    sql, args = "", tuple[Any, ...]()
    if models is not None:
        sql, args = "AND model = ANY(%s)", (list(models),)
    if batch_key is not None:
        sql, args = f"{sql} AND batch_key = %s", (*args, batch_key)
    return sql, args
