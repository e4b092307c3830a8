"""Jobs to rows and back, shared by the SQL backends: every dialect has the same columns."""

from __future__ import annotations

import json
from typing import Any, Protocol

from sdapi.jobs import GenerationRequest, Job, JobStatus, sources_of
from sdapi.queue.base import NewJob, rate_key

#: Columns an INSERT of a new job fills, in the order of `insert_values`.
INSERT_COLUMNS = (
    "owner", "status", "model", "request", "batch_key", "rate_key", "work_units", "output_names",
    "created_at", "webhook", "track_id", "echo",
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
        new.owner, JobStatus.QUEUED.value, req.model, req.to_json(), req.batch_key,
        rate_key(req.model, req.task), req.work_units, json.dumps(new.output_names), now,
        new.webhook, new.track_id, json.dumps(dict(new.echo)),
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
    " progress = 1, lease_id = NULL, lease_expires_at = NULL"
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
        echo=json.loads(row["echo"]),
    )
