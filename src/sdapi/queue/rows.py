"""What the SQL backends share: the named queries both dialects run (written once, with `{p}`
for the dialect's placeholder, `?` or `%s`; what differs stays in the backend's own module),
the reaping of expired leases, and jobs to rows and back (every dialect has the same columns)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sdapi.catalog.work import batch_key, call_steps, work_units
from sdapi.costs import Cost
from sdapi.jobs import (
    Echo,
    GenerationRequest,
    Job,
    JobStatus,
    Pending,
    QueueStats,
    Rendered,
    sources_of,
)
from sdapi.metrics import Sample, job_ended
from sdapi.queue.base import (
    ABANDONED_ERROR,
    DEADLINE_ERROR,
    Expired,
    Learned,
    Line,
    NewJob,
    WorkerInfo,
    rate_key,
    split_expired,
)

#: Columns an INSERT of a new job fills, in the order of `insert_values`.
INSERT_COLUMNS = (
    "owner", "status", "model", "request", "batch_key", "rate_key", "work_units", "output_names",
    "created_at", "webhook", "track_id", "echo", "webhook_status", "deadline_at", "keep_until",
    "images", "call_steps", "base_url", "webhook_progress",
)  # fmt: skip


class Row(Protocol):
    """sqlite3.Row and psycopg's dict rows alike: values by column name."""

    def __getitem__(self, key: str) -> Any: ...


def insert_sql(placeholder: str) -> str:
    """The INSERT of a new job in a dialect's placeholder style (`?` or `%s`)."""
    marks = ", ".join([placeholder] * len(INSERT_COLUMNS))
    return f"INSERT INTO jobs ({', '.join(INSERT_COLUMNS)}) VALUES ({marks})"


def insert_values(new: NewJob, now: float) -> tuple[Any, ...]:
    req = new.request
    return (
        new.owner, JobStatus.QUEUED.value, req.model, req.to_json(), batch_key(req),
        rate_key(req.model, req.task), work_units(req), json.dumps(new.output_names), now,
        new.webhook, new.track_id, new.echo.to_json(), new.webhook_status,
        new.deadline_at, new.keep_until, req.samples, call_steps(req), new.base_url,
        new.webhook_progress,
    )  # fmt: skip


def states_sql(dst: JobStatus) -> str:
    """`('a','b')`: the states a job may leave for `dst`, for a WHERE ... IN.

    Literal SQL built from the enum, never from input: the transition table stays the one
    source of which changes are allowed.
    """
    return "(" + ",".join(f"'{s.value}'" for s in sources_of(dst)) + ")"


TO_PROCESSING = states_sql(JobStatus.PROCESSING)

#: Terminal updates, identical in every dialect but for the placeholder `{p}` (`?` or `%s`).
#: Each holds only for the current lease holder, so a stale worker's late write matches no row.
SUCCEED = (
    "UPDATE jobs SET status = 'success', finished_at = {p}, generation_seconds = {p},"
    " nsfw = {p}, call_size = {p}, rendered = {p}, progress = 1, lease_id = NULL,"
    " lease_expires_at = NULL"
    f" WHERE id = {{p}} AND lease_id = {{p}} AND status IN {states_sql(JobStatus.SUCCESS)}"
)
FAIL = (
    "UPDATE jobs SET status = 'failed', finished_at = {p}, error = {p}, lease_id = NULL,"
    " lease_expires_at = NULL"
    f" WHERE id = {{p}} AND lease_id = {{p}} AND status IN {states_sql(JobStatus.FAILED)}"
)
CANCEL_QUEUED = (
    "UPDATE jobs SET status = 'cancelled', finished_at = {p} WHERE id = {p} AND status = 'queued'"
)


#: The owner's earlier job with the same track_id (idempotent submission), newest first.
SAME_TRACK = (
    "SELECT * FROM jobs WHERE owner = {p} AND track_id = {p} AND created_at >= {p}"
    " ORDER BY id DESC LIMIT 1"
)
LIVE = "('queued', 'processing')"
OWNER_LIVE = f"SELECT COUNT(*) AS n FROM jobs WHERE owner = {{p}} AND status IN {LIVE}"
QUEUE_LIVE = f"SELECT COUNT(*) AS n FROM jobs WHERE status IN {LIVE}"
#: A lease handed back: its jobs go back in line as if the attempt never happened.
RELEASE = (
    "UPDATE jobs SET status = 'queued', attempts = attempts - 1, lease_id = NULL,"
    " lease_expires_at = NULL, worker_id = NULL, progress = 0, started_at = NULL"
    " WHERE lease_id = {p} AND status = 'processing'"
)
#: Expired jobs past the history window: their rows go, and their outbox events with them.
FORGETTABLE = (
    "SELECT id FROM jobs WHERE status = 'expired' AND finished_at < {p} ORDER BY id LIMIT {p}"
)
FORGET_EVENTS = f"DELETE FROM webhook_events WHERE job_id IN ({FORGETTABLE})"
FORGET_JOBS = f"DELETE FROM jobs WHERE id IN ({FORGETTABLE})"
RECENT = "SELECT * FROM jobs WHERE owner = {p} ORDER BY id DESC LIMIT {p}"
RUNNING = "SELECT * FROM jobs WHERE status = 'processing' ORDER BY id LIMIT {p}"
GET_JOB = "SELECT * FROM jobs WHERE id = {p}"
QUEUED_JOB = "SELECT 1 FROM jobs WHERE id = {p} AND status = 'queued'"
#: A worker announcing itself; a restarted one with the same id starts afresh.
REGISTER_WORKER = (
    "INSERT INTO workers (id, host, pid, device, model, state, started_at, seen_at)"
    " VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
    " ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
    " device = excluded.device, model = excluded.model, state = excluded.state,"
    " started_at = excluded.started_at, seen_at = excluded.seen_at"
)
WORKER_SEEN = "UPDATE workers SET seen_at = {p}, state = {p} WHERE id = {p}"
REMOVE_WORKER = "DELETE FROM workers WHERE id = {p}"
#: Leases that ran out (their worker stopped): reaped by the next claim.
EXPIRED_LEASES = (
    "SELECT id, attempts, cancel_requested FROM jobs"
    " WHERE status = 'processing' AND lease_expires_at < {p} ORDER BY id"
)
_LEASE_GONE = "lease_id = NULL, lease_expires_at = NULL"
END_CANCELLED = (
    f"UPDATE jobs SET status = 'cancelled', finished_at = {{p}}, {_LEASE_GONE} WHERE id = {{p}}"
)
END_ABANDONED = (
    f"UPDATE jobs SET status = 'failed', error = {{p}}, finished_at = {{p}}, {_LEASE_GONE}"
    " WHERE id = {p}"
)
REQUEUE = (
    f"UPDATE jobs SET status = 'queued', {_LEASE_GONE}, worker_id = NULL, progress = 0"
    " WHERE id = {p}"
)
#: Queued jobs past their deadline fail instead of starting.
FAIL_LATE = (
    "UPDATE jobs SET status = 'failed', finished_at = {p}, error = {p}"
    " WHERE status = 'queued' AND deadline_at IS NOT NULL AND deadline_at < {p}"
)
LATE_IDS = (
    "SELECT id FROM jobs WHERE status = 'queued' AND deadline_at IS NOT NULL AND deadline_at < {p}"
)
#: The ended states (the ones a job may expire from).
FINAL_STATES = states_sql(JobStatus.EXPIRED)
#: The outbox event a job's final state calls for, written in the transaction that set it.
#: At most one per job and state, whatever path (worker, reaper, cancel) got it there.
WEBHOOK_EVENT = (
    "INSERT INTO webhook_events (event_id, job_id, event, url, created_at, next_attempt_at)"
    f" SELECT {{p}}, id, status, webhook, {{p}}, {{p}} FROM jobs"
    f" WHERE id = {{p}} AND webhook IS NOT NULL AND status IN {FINAL_STATES}"
    " ON CONFLICT (job_id, event) DO NOTHING"
)
#: Due events for one dispatcher: the claim pushes `next_attempt_at` out by the lease.
DUE_WEBHOOKS = (
    "SELECT event_id, job_id, event, url, attempts, created_at FROM webhook_events"
    " WHERE state = 'pending' AND next_attempt_at <= {p} ORDER BY next_attempt_at LIMIT {p}"
)
RECORD_WEBHOOK = (
    "UPDATE webhook_events SET state = {p}, attempts = attempts + 1, last_error = {p},"
    " next_attempt_at = {p}, delivered_at = {p} WHERE event_id = {p} AND state = 'pending'"
)
JOB_WEBHOOK_STATUS = (
    "UPDATE jobs SET webhook_status = {p}"
    " WHERE id = (SELECT job_id FROM webhook_events WHERE event_id = {p})"
)
#: Ended jobs due for expiry: past the retention age, or temporary and past keep_until.
EXPIRABLE = (
    f"SELECT * FROM jobs WHERE status IN {FINAL_STATES} AND ("
    " (keep_until IS NOT NULL AND keep_until < {p}) OR finished_at < {p})"
    " ORDER BY finished_at LIMIT {p}"
)

EXPIRE = f"UPDATE jobs SET status = 'expired' WHERE id = {{p}} AND status IN {FINAL_STATES}"


#: Adds to a counter or bucket; every process's events land in the same rows.
BUMP_METRIC = (
    "INSERT INTO metrics (name, labels, value) VALUES ({p}, {p}, {p})"
    " ON CONFLICT (name, labels) DO UPDATE SET value = metrics.value + excluded.value"
)
READ_METRICS = "SELECT name, labels, value FROM metrics"
#: What the metrics of a job's end need to know about it.
ENDED = "SELECT status, model, batch_key, generation_seconds FROM jobs WHERE id = {p}"


def ended_samples(row: Row) -> list[Sample]:
    """The metrics of one job's end (see sdapi.metrics.job_ended)."""
    size = str(row["batch_key"]).split("|")[2]  # GenerationRequest.batch_key: model|task|WxH|...
    return job_ended(row["status"], row["model"], size, row["generation_seconds"])


def webhook_event_args(job_id: int, now: float) -> tuple[Any, ...]:
    """Arguments of WEBHOOK_EVENT: a fresh event id, kept for every retry of the event."""
    return (f"msg_{uuid.uuid4().hex}", now, now, job_id)


def webhook_record_args(
    event_id: str, delivered: bool, error: str | None, retry_at: float | None, now: float
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Arguments of RECORD_WEBHOOK and JOB_WEBHOOK_STATUS after one delivery attempt."""
    if delivered:
        state, status = "delivered", "delivered"
    elif retry_at is not None:
        state, status = "pending", "retrying"
    else:
        state, status = "failed", "failed"
    event = (state, error, retry_at or now, now if delivered else None, event_id)
    return event, (status, event_id)


class Executes(Protocol):
    """A sqlite3 or psycopg connection: what the shared statements below run on."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...


def reap_expired(
    conn: Executes, p: str, now: float, max_attempts: int, locks: tuple[str, str] = ("", "")
) -> tuple[Expired, list[int]]:
    """What becomes of expired leases (`split_expired`: cancelled, failed, back in line), and
    the queued jobs failed for their passed deadline; in the caller's transaction. `p` is the
    dialect's placeholder; `locks` what its two SELECTs add to lock the rows they change (where
    claimers run side by side)."""
    lock, late_lock = locks
    rows = conn.execute(EXPIRED_LEASES.format(p=p) + lock, (now,)).fetchall()
    expired = split_expired(
        [(r["id"], r["attempts"], bool(r["cancel_requested"])) for r in rows], max_attempts
    )
    for job_id in expired.cancelled:
        conn.execute(END_CANCELLED.format(p=p), (now, job_id))
    for job_id, attempts in expired.abandoned:
        conn.execute(
            END_ABANDONED.format(p=p), (ABANDONED_ERROR.format(attempts=attempts), now, job_id)
        )
    for job_id in expired.requeued:
        conn.execute(REQUEUE.format(p=p), (job_id,))
    late = [r["id"] for r in conn.execute(LATE_IDS.format(p=p) + late_lock, (now,)).fetchall()]
    if late:
        conn.execute(FAIL_LATE.format(p=p), (now, DEADLINE_ERROR, now))
    return expired, late


def worker_args(info: WorkerInfo, now: float) -> tuple[Any, ...]:
    """REGISTER_WORKER's arguments."""
    return (info.id, info.host, info.pid, info.device, info.model, info.state, now, now)


def succeed_args(
    now: float,
    generation_seconds: float,
    nsfw: bool,
    call_size: int | None,
    rendered: Rendered | None,
    job_id: int,
    lease_id: str,
) -> tuple[Any, ...]:
    """SUCCEED's arguments."""
    text = rendered.to_json() if rendered is not None else None
    return (now, generation_seconds, nsfw, call_size, text, job_id, lease_id)


def job_from_row(row: Row) -> Job:
    return Job(
        id=row["id"],
        owner=row["owner"],
        status=JobStatus(row["status"]),
        request=GenerationRequest.from_json(row["request"]),
        output_names=tuple(json.loads(row["output_names"])),
        created_at=row["created_at"],
        attempts=row["attempts"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        lease_id=row["lease_id"],
        lease_expires_at=row["lease_expires_at"],
        worker_id=row["worker_id"],
        progress=row["progress"],
        cancel_requested=bool(row["cancel_requested"]),
        generation_seconds=row["generation_seconds"],
        error=row["error"],
        webhook=row["webhook"],
        track_id=row["track_id"],
        echo=Echo.from_json(row["echo"]),
        # Jobs queued before these were columns kept them in the echo JSON.
        base_url=row["base_url"] or json.loads(row["echo"]).get("base_url"),
        webhook_progress=bool(row["webhook_progress"])
        or bool(json.loads(row["echo"]).get("webhook_progress")),
        webhook_status=row["webhook_status"],
        deadline_at=row["deadline_at"],
        keep_until=row["keep_until"],
        nsfw=bool(row["nsfw"]),
        call_size=row["call_size"],
        rendered=Rendered.from_json(row["rendered"]) if row["rendered"] else None,
    )


#: Live jobs grouped for the ETA (sdapi.jobs.Pending): queued ones by batch key, running ones
#: by batch key and worker (queued jobs have no worker).
_PENDING = (
    "SELECT batch_key, rate_key, worker_id, COUNT(*) AS jobs, SUM(images) AS images,"
    " SUM(work_units) AS units, MAX(call_steps) AS steps, MIN(started_at) AS started_at,"
    " MIN(progress) AS progress FROM jobs WHERE {where} GROUP BY batch_key, rate_key, worker_id"
)
PENDING = _PENDING.format(where="status IN ('queued', 'processing')")
#: The same for the work ahead of queued job {p}: the queued jobs before it, and every running one.
AHEAD = _PENDING.format(where="(status = 'queued' AND id < {p}) OR status = 'processing'")
#: The claim's window: the queued jobs at the front of the line a batch is picked from.
CLAIM_COLUMNS = "id, batch_key, images"


def pending_from_row(row: Row) -> Pending:
    """A PENDING or AHEAD row: its columns are named after Pending's fields."""
    return Pending(*(row[f.name] for f in dataclasses.fields(Pending)))


def queue_stats(groups: Sequence[Pending], live_workers: int) -> QueueStats:
    queued = sum(group.jobs for group in groups if group.worker_id is None)
    processing = sum(group.jobs for group in groups if group.worker_id is not None)
    return QueueStats(queued, processing, live_workers, tuple(groups))


def line_of(groups: Sequence[Pending], live_workers: int) -> Line:
    """A queued job's Line from the groups ahead of it (AHEAD)."""
    place = 1 + sum(group.jobs for group in groups if group.worker_id is None)
    return Line(place, tuple(groups), live_workers)


#: Workers seen since {p}: the live ones.
LIVE_WORKERS = "SELECT COUNT(*) AS n FROM workers WHERE seen_at >= {p}"


#: The costs learned of some keys, and their upsert (sdapi.queue.base.relearn).
COSTS = "SELECT rate_key, overhead, per_step, per_unit, scale, call_cap FROM costs"
UPSERT_COST = (
    "INSERT INTO costs (rate_key, overhead, per_step, per_unit, scale, call_cap, updated_at)"
    " VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT (rate_key) DO UPDATE SET"
    " overhead = excluded.overhead, per_step = excluded.per_step,"
    " per_unit = excluded.per_unit, scale = excluded.scale, call_cap = excluded.call_cap,"
    " updated_at = excluded.updated_at"
)
RECORD_TIMING = (
    "INSERT INTO timings (rate_key, units, steps, seconds, recorded_at)"
    " VALUES ({p}, {p}, {p}, {p}, {p})"
)
#: Keeps a key's latest OBSERVATIONS calls.
TRIM_TIMINGS = (
    "DELETE FROM timings WHERE rate_key = {p} AND id NOT IN"
    " (SELECT id FROM timings WHERE rate_key = {p} ORDER BY id DESC LIMIT {p})"
)
TIMINGS = "SELECT units, steps, seconds FROM timings WHERE rate_key = {p} ORDER BY id"


def learned_from_row(row: Row) -> Learned:
    cost = None
    if row["overhead"] is not None:
        cost = Cost(row["overhead"], row["per_step"], row["per_unit"])
    return Learned(cost, row["scale"], row["call_cap"])


def cost_rows(
    learned: Mapping[str, tuple[Cost | None, float]], batch_key: str, cap: int, now: float
) -> list[tuple[Any, ...]]:
    """UPSERT_COST's arguments for what `relearn` gave."""
    rows = []
    for key, (cost, factor) in learned.items():
        terms = cost.terms() if cost is not None else (None, None, None)
        rows.append((key, *terms, factor, cap if key == batch_key else 1, now))
    return rows
