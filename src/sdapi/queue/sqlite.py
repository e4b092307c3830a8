"""The SQLite queue backend (the embedded default).

Every change of state is one conditional UPDATE whose WHERE lists the states the transition
table allows as sources, so a stale worker's late write simply matches no row.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Sequence

from sdapi.database.sqlite import SQLiteDatabase
from sdapi.jobs import Job, QueueStats
from sdapi.queue.base import (
    ABANDONED_ERROR,
    WORKER_STALE_S,
    Clock,
    NewJob,
    WorkerInfo,
    blend_rate,
    learned_seconds,
)
from sdapi.queue.rows import (
    CANCEL_QUEUED,
    FAIL,
    SUCCEED,
    TO_PROCESSING,
    insert_sql,
    insert_values,
    job_from_row,
)

#: How many queued jobs a claim looks at to gather a batch of compatible ones.
CLAIM_WINDOW = 64


class SQLiteQueue:
    def __init__(self, db: SQLiteDatabase, *, max_attempts: int = 3, clock: Clock = time.time):
        self.db = db
        self.max_attempts = max_attempts
        self.clock = clock

    def enqueue(self, new: NewJob) -> Job:
        with self.db.write() as conn:
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
        """Expired leases: a job whose owner asked to cancel stays cancelled; fail jobs that
        used up their attempts; requeue the others."""
        expired = "status = 'processing' AND lease_expires_at < ?"
        conn.execute(
            f"UPDATE jobs SET status = 'cancelled', finished_at = ?, lease_id = NULL,"
            f" lease_expires_at = NULL WHERE {expired} AND cancel_requested = 1",
            (now, now),
        )
        for row in conn.execute(
            f"SELECT id, attempts FROM jobs WHERE {expired} AND attempts >= ?",
            (now, self.max_attempts),
        ).fetchall():
            conn.execute(
                "UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, lease_id = NULL,"
                " lease_expires_at = NULL WHERE id = ?",
                (ABANDONED_ERROR.format(attempts=row["attempts"]), now, row["id"]),
            )
        conn.execute(
            f"UPDATE jobs SET status = 'queued', lease_id = NULL, lease_expires_at = NULL,"
            f" worker_id = NULL, progress = 0 WHERE {expired}",
            (now,),
        )

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
    ) -> bool:
        now = self.clock()
        with self.db.write() as conn:
            cur = conn.execute(
                SUCCEED.format(p="?"),
                (now, generation_seconds, job_id, lease_id),
            )
            if cur.rowcount:
                seconds = learned_seconds(generation_seconds, cost_seconds)
                self._learn_rate(conn, job_id, seconds, call_rows, now)
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
        with self.db.write() as conn:
            cur = conn.execute(
                FAIL.format(p="?"),
                (self.clock(), error, job_id, lease_id),
            )
        return cur.rowcount == 1

    def cancel(self, job_id: int) -> Job | None:
        with self.db.write() as conn:
            conn.execute(
                CANCEL_QUEUED.format(p="?"),
                (self.clock(), job_id),
            )
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
        with self.db.write() as conn:
            ids = [r[0] for r in conn.execute(f"SELECT id FROM jobs WHERE {held}", (lease_id,))]
            conn.execute(
                f"UPDATE jobs SET status = 'cancelled', finished_at = ?, lease_id = NULL,"
                f" lease_expires_at = NULL WHERE {held}",
                (self.clock(), lease_id),
            )
        return sorted(ids)

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
