"""The queue port: what the API and the workers may ask of the job store.

Guarantees every backend gives (tests/contract/test_queue.py checks them on each):
- `enqueue` is durable when it returns: the job survives any crash after that.
- `claim` is atomic: no two callers ever hold the same job. A claim is a lease with a fresh
  `lease_id`; a job whose lease expired goes back to the queue (or fails after `max_attempts`).
- `complete` / `fail` act only for the holder of the current lease, so every job has exactly one
  terminal outcome however many workers died on it.
- Every final state of a job with a webhook writes its outbox event in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sdapi.jobs import GenerationRequest, Job, QueueStats, Task
from sdapi.metrics import Sample

Clock = Callable[[], float]

#: Error recorded on a job whose workers kept dying.
ABANDONED_ERROR = "The job was interrupted {attempts} times (its worker stopped); giving up"
#: Error recorded on a job that was still queued when its deadline passed.
DEADLINE_ERROR = "The job's deadline passed before a worker could start it"


@dataclass(frozen=True, slots=True)
class NewJob:
    """What the API hands the queue; the queue adds id, status and times."""

    owner: str
    request: GenerationRequest
    output_names: tuple[str, ...]
    webhook: str | None = None
    track_id: str | None = None
    echo: Mapping[str, Any] = field(default_factory=dict)
    deadline_at: float | None = None
    keep_until: float | None = None
    #: With a track_id: the owner's job with the same track_id created at or after this time,
    #: if there is one, is returned instead of a new job (idempotent submission).
    dedupe_since: float | None = None
    #: Refuse (QueueFull) when the owner already has this many jobs queued or running.
    owner_cap: int | None = None
    #: Refuse (QueueFull) when the whole queue holds this many jobs queued or running.
    queue_cap: int | None = None

    @property
    def webhook_status(self) -> str:
        return "pending" if self.webhook else ""

    def with_echo(self, **more: Any) -> NewJob:
        return replace(self, echo={**self.echo, **more})


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One outbox row: a webhook the final state of a job calls for."""

    event_id: str
    job_id: int
    #: The job's final status: success, failed or cancelled.
    event: str
    url: str
    #: Attempts made before this one.
    attempts: int
    created_at: float


class QueueFull(Exception):
    """A cap on live (queued or running) jobs was reached; nothing was enqueued."""

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"{scope} limit of {limit} live jobs reached")
        #: "key" (the owner's own cap) or "server" (the whole queue's).
        self.scope = scope
        self.limit = limit


def enforce_caps(new: NewJob, owner_live: Callable[[], int], queue_live: Callable[[], int]) -> None:
    """Raise QueueFull if `new` would exceed a cap; counts only what a set cap needs."""
    if new.owner_cap is not None and owner_live() >= new.owner_cap:
        raise QueueFull("key", new.owner_cap)
    if new.queue_cap is not None and queue_live() >= new.queue_cap:
        raise QueueFull("server", new.queue_cap)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    device: str
    model: str
    #: "starting" while it loads its model, then "ready" or "busy".
    state: str = "starting"


def rate_key(model: str, task: Task) -> str:
    """Speed is learned per model and task; size, steps and samples are in the work units."""
    return f"{model}|{task}"


class JobQueue(Protocol):
    def enqueue(self, new: NewJob) -> Job:
        """Store a queued job durably and return it with its id.

        With `new.dedupe_since` and a track_id, the owner's job with that track_id created
        since then is returned instead, if there is one (checked and inserted atomically).
        Raises QueueFull when a cap in `new` is reached (the owner's cap exactly, under
        concurrent submissions too).
        """
        ...

    def get(self, job_id: int) -> Job | None: ...

    def claim(
        self,
        worker_id: str,
        *,
        lease_s: float,
        limit: int = 1,
        models: Sequence[str] | None = None,
        batch_key: str | None = None,
    ) -> list[Job]:
        """Atomically lease up to `limit` queued jobs that share the oldest job's batch key.

        Only jobs for `models` are considered (None: any model), and only jobs with
        `batch_key` when given (a worker gathering more work for a batch it started).

        First returns expired leases to the queue (or fails them after `max_attempts`), and
        fails queued jobs whose deadline passed.
        """
        ...

    def heartbeat(self, lease_id: str, *, lease_s: float, progress: float | None = None) -> int:
        """Extend a lease (and record progress); returns how many jobs the lease still holds."""
        ...

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
        """Mark success if `lease_id` still holds the job; learns the generation rate.
        `nsfw`: the safety checker replaced at least one of its images.

        `generation_seconds` is the wall time the client sees; `cost_seconds`, when the job
        shared a batch, is its share of the worker's time, which is what the rate learns from;
        `call_rows` is how many images the worker's calls for its batch key run.
        """
        ...

    def fail(self, job_id: int, lease_id: str, *, error: str) -> bool:
        """Mark failed if `lease_id` still holds the job."""
        ...

    def release(self, lease_id: str) -> list[int]:
        """Hand a lease's jobs back to the queue (a worker shutting down): queued again, the
        attempt not counted; those whose owner asked to cancel end cancelled instead. Returns
        the ids put back in line."""
        ...

    def cancel(self, job_id: int) -> Job | None:
        """Cancel a job: a queued one ends `cancelled` at once (it never runs); a running one
        is flagged for its worker, which stops it (see `stop_cancelled`). Idempotent; a job
        that already ended is left as it is. None for an unknown id.
        """
        ...

    def stop_cancelled(self, lease_id: str) -> list[int]:
        """For a worker: end as `cancelled` the jobs of this lease whose owner asked to cancel;
        returns their ids (the worker drops their work)."""
        ...

    def recent(self, owner: str, *, limit: int) -> list[Job]:
        """The owner's newest jobs, newest first (at most `limit`)."""
        ...

    def running(self, *, limit: int) -> list[Job]:
        """Jobs being generated now, oldest first (at most `limit`)."""
        ...

    def position(self, job_id: int) -> tuple[int, float] | None:
        """For a queued job: (1-based place in line, work units ahead of it incl. running)."""
        ...

    def stats(self) -> QueueStats: ...

    def rate(self, key: str) -> float | None:
        """Measured seconds per work unit for a batch key or a `rate_key(model, task)`.

        Both are learned from every finished job; None before a job of the kind finished.
        """
        ...

    def call_rows(self, batch_key: str) -> int:
        """Images per pipeline call the workers run for a batch key (1 before any finished)."""
        ...

    def wait_for_work(self, timeout: float) -> None:
        """Block until work may have arrived (a job enqueued or released) or `timeout` passed.

        Backends that can be told (PostgreSQL's NOTIFY) wake at once; others simply sleep.
        """
        ...

    def claim_webhooks(self, *, limit: int, lease_s: float) -> list[WebhookEvent]:
        """Lease up to `limit` due webhook events to one dispatcher for `lease_s` seconds (a
        dispatcher that dies holding one leaves it to be sent again, with the same event id)."""
        ...

    def record_webhook(
        self, event_id: str, *, delivered: bool, error: str | None = None, retry_at: float | None
    ) -> None:
        """The outcome of one delivery attempt: delivered, to be retried at `retry_at`, or
        (neither) given up. The job's `webhook_status` follows in the same transaction."""
        ...

    def expirable(self, *, finished_before: float | None, limit: int) -> list[Job]:
        """Ended jobs whose files are due for removal: finished before `finished_before`
        (None: no retention limit) or temporary and past their `keep_until`; oldest first."""
        ...

    def expire(self, job_ids: Sequence[int]) -> None:
        """Mark ended jobs `expired` (their files are gone); other states are left alone."""
        ...

    def record_metrics(self, samples: Sequence[Sample]) -> None:
        """Add samples (see sdapi.metrics) to the deployment's counters, in one transaction."""
        ...

    def metrics(self) -> list[Sample]:
        """Every counter and bucket the deployment has recorded."""
        ...

    def forget(self, *, finished_before: float, limit: int) -> int:
        """Delete up to `limit` expired jobs that finished before then (with their outbox
        events), so history stays bounded; returns how many went. Fetch then answers them as
        unknown."""
        ...

    def register_worker(self, info: WorkerInfo) -> None: ...

    def worker_seen(self, worker_id: str, state: str) -> None: ...

    def remove_worker(self, worker_id: str) -> None: ...

    def close(self) -> None: ...


#: A worker that has not been seen for this long is not counted as live.
WORKER_STALE_S = 30.0
#: Weight of the newest measurement in the learned rate (exponential moving average).
RATE_ALPHA = 0.3


def learned_seconds(generation_seconds: float, cost_seconds: float | None) -> float:
    return generation_seconds if cost_seconds is None else cost_seconds


def blend_rate(old: float | None, measured: float) -> float:
    return measured if old is None else (1 - RATE_ALPHA) * old + RATE_ALPHA * measured


@dataclass(frozen=True, slots=True)
class Expired:
    """What happens to jobs whose lease expired (their worker stopped)."""

    #: The owner asked to cancel before the worker died: they stay cancelled.
    cancelled: list[int]
    #: (id, attempts) of jobs that used up their attempts: they fail.
    abandoned: list[tuple[int, int]]
    #: The others go back in line.
    requeued: list[int]

    @property
    def ended(self) -> list[int]:
        return self.cancelled + [job_id for job_id, _ in self.abandoned]


def attempt_outcome(delivered: bool, retry_at: float | None) -> str:
    """A webhook attempt as the metrics count it."""
    return "delivered" if delivered else "retry" if retry_at is not None else "failed"


def split_expired(rows: Sequence[tuple[int, int, bool]], max_attempts: int) -> Expired:
    """Sort (id, attempts, cancel_requested) of expired leases by what becomes of each job."""
    out = Expired([], [], [])
    for job_id, attempts, cancel_requested in rows:
        if cancel_requested:
            out.cancelled.append(job_id)
        elif attempts >= max_attempts:
            out.abandoned.append((job_id, attempts))
        else:
            out.requeued.append(job_id)
    return out


def same_batch(jobs: Sequence[Job], limit: int) -> list[Job]:
    """The oldest job and the next ones with its batch key, up to `limit` (queue order kept)."""
    if not jobs:
        return []
    key = jobs[0].request.batch_key
    return [job for job in jobs if job.request.batch_key == key][:limit]
