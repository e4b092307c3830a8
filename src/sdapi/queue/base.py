"""The queue port: what the API and the workers may ask of the job store.

Guarantees every backend gives (tests/contract/test_queue.py checks them on each):
- `enqueue` is durable when it returns: the job survives any crash after that.
- `claim` is atomic: no two callers ever hold the same job. A claim is a lease with a fresh
  `lease_id`; a job whose lease expired goes back to the queue (or fails after `max_attempts`).
- `complete` / `fail` act only for the holder of the current lease, so every job has exactly one
  terminal outcome however many workers died on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sdapi.jobs import GenerationRequest, Job, QueueStats, Task

Clock = Callable[[], float]

#: Error recorded on a job whose workers kept dying.
ABANDONED_ERROR = "The job was interrupted {attempts} times (its worker stopped); giving up"


@dataclass(frozen=True, slots=True)
class NewJob:
    """What the API hands the queue; the queue adds id, status and times."""

    owner: str
    request: GenerationRequest
    output_names: tuple[str, ...]
    webhook: str | None = None
    track_id: str | None = None
    echo: Mapping[str, Any] = field(default_factory=dict)


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
        """Store a queued job durably and return it with its id."""
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

        First returns expired leases to the queue (or fails them after `max_attempts`).
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
    ) -> bool:
        """Mark success if `lease_id` still holds the job; learns the generation rate.

        `generation_seconds` is the wall time the client sees; `cost_seconds`, when the job
        shared a batch, is its share of the worker's time, which is what the rate learns from;
        `call_rows` is how many images the worker's calls for its batch key run.
        """
        ...

    def fail(self, job_id: int, lease_id: str, *, error: str) -> bool:
        """Mark failed if `lease_id` still holds the job."""
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


def same_batch(jobs: Sequence[Job], limit: int) -> list[Job]:
    """The oldest job and the next ones with its batch key, up to `limit` (queue order kept)."""
    if not jobs:
        return []
    key = jobs[0].request.batch_key
    return [job for job in jobs if job.request.batch_key == key][:limit]
