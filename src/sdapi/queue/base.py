"""The queue's ports: what the API, the workers and the background duties may ask of the job
database, one Protocol per concern (Jobs, Outbox, Measurements, Workers, Retention); a backend
(memory, SQLite, PostgreSQL) implements each in a module of its own.

Guarantees every backend gives (tests/contract/ checks them on each, a suite per port):
- `enqueue` is durable when it returns: the job survives any crash after that.
- `claim` is atomic: no two callers ever hold the same job. A claim is a lease with a fresh
  `lease_id`; a job whose lease expired goes back to the queue (or fails after `max_attempts`).
- `complete` / `fail` act only for the holder of the current lease, so every job has exactly one
  terminal outcome however many workers died on it.
- Every final state of a job with a webhook writes its outbox event in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sdapi.catalog.work import batch_key, call_steps, work_units
from sdapi.costs import OBSERVATIONS, Call, Cost, fit, scale
from sdapi.jobs import Echo, GenerationRequest, Job, Pending, QueueStats, Rendered, Task
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
    echo: Echo = field(default_factory=Echo)
    base_url: str | None = None
    webhook_progress: bool = False
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
    """Costs are learned per model and task; size, steps and samples are their variables."""
    return f"{model}|{task}"


#: The key every call is learned under too: the deployment's cost, for a model never run yet.
ANY_KEY = "*"


@dataclass(frozen=True, slots=True)
class Learned:
    """What the queue has learned of one key's calls.

    A model+task key (and ANY_KEY) holds a fitted `cost`; a batch key holds only `scale`, its
    calls' times against its model's cost, and `cap`, the most images the workers' calls for it
    make.
    """

    cost: Cost | None = None
    scale: float = 1.0
    cap: int = 1


@dataclass(frozen=True, slots=True)
class Line:
    """Where a queued job stands: its place (1 = next), the live work ahead of it (running
    batches included), and the live workers that share it."""

    place: int
    ahead: tuple[Pending, ...]
    workers: int


def relearn(
    history: Callable[[str], Sequence[Call]], batch_key: str, model_key: str, prior: Cost
) -> dict[str, tuple[Cost | None, float]]:
    """The (cost, scale) to store for each key a call was recorded under, from each key's
    latest calls (`history`, oldest first): fitted costs for the model+task key and ANY_KEY,
    and the batch key's factor against its model's new cost."""
    model_cost = fit(history(model_key)[-OBSERVATIONS:], prior)
    return {
        ANY_KEY: (fit(history(ANY_KEY)[-OBSERVATIONS:], prior), 1.0),
        model_key: (model_cost, 1.0),
        batch_key: (None, scale(history(batch_key), model_cost)),
    }


def group_pending(jobs: Iterable[Job]) -> tuple[Pending, ...]:
    """Live jobs grouped as the SQL backends group them: queued ones by batch key, running ones
    by batch key and worker."""
    groups: dict[tuple[str, str | None], list[Job]] = {}
    for job in jobs:
        groups.setdefault((batch_key(job.request), job.worker_id), []).append(job)
    return tuple(
        Pending(
            batch_key=key,
            rate_key=rate_key(members[0].request.model, members[0].request.task),
            worker_id=worker_id,
            jobs=len(members),
            images=sum(job.request.samples for job in members),
            units=sum(work_units(job.request) for job in members),
            steps=call_steps(members[0].request),
            started_at=min((job.started_at or 0.0 for job in members), default=None)
            if worker_id is not None
            else None,
            progress=min(job.progress for job in members),
        )
        for (key, worker_id), members in groups.items()
    )


def pick_batch(rows: Sequence[tuple[int, str, int]], images: int, gathering: bool) -> list[int]:
    """Ids of (id, batch_key, images) rows, in line order, to claim as one batch: the first
    row's key, whole jobs while their images fit in `images`. A claim takes its first job
    whatever its size; a worker gathering more for a batch in hand (`gathering`) only what fits.
    """
    if not rows:
        return []
    key = rows[0][1]
    picked: list[int] = []
    room = images
    for job_id, row_key, count in rows:
        if row_key != key:
            continue
        if count > room and (picked or gathering):
            break  # no overtaking within a key: the line's order holds
        picked.append(job_id)
        room -= count
    return picked


class Jobs(Protocol):
    """The jobs: submitting, claiming, running, ending, and where they stand."""

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
        images: int = 1,
        models: Sequence[str] | None = None,
        batch_key: str | None = None,
    ) -> list[Job]:
        """Atomically lease the oldest queued job and the next ones with its batch key, whole
        jobs while their images (samples) fit in `images` (see `pick_batch`).

        Only jobs for `models` are considered (None: any model), and only jobs with
        `batch_key` when given (a worker gathering more work for a batch it started, which
        takes only jobs that fit).

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
        call_size: int | None = None,
        nsfw: bool = False,
        rendered: Rendered | None = None,
    ) -> bool:
        """Mark success if `lease_id` still holds the job. `call_size`: how many images the
        pipeline call that made its images computed; `nsfw`: the safety checker replaced at
        least one of its images; `rendered`: the prompts the worker drew from, when the prompt
        options rewrote them."""
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

    def position(self, job_id: int) -> Line | None:
        """For a queued job: its place and the live work ahead of it; None otherwise."""
        ...

    def stats(self) -> QueueStats: ...

    def wait_for_work(self, timeout: float) -> None:
        """Block until work may have arrived (a job enqueued or released) or `timeout` passed.

        Every backend is woken at once (PostgreSQL's NOTIFY, SQLite's doorbell between the
        processes sharing the file, a condition in memory); the timeout is a safety net.
        """
        ...

    def wait_for_changes(self, timeout: float) -> frozenset[int] | None:
        """Block until jobs changed (claimed, ended, cancelled, put back) or `timeout` passed:
        the ids that changed since the last call (empty when none did), or None when the
        backend cannot tell which (every job may have). One caller per queue object, which
        wakes the others (sdapi.api.watch)."""
        ...


class Outbox(Protocol):
    """The webhook outbox: the events that jobs ending wrote, leased to one dispatcher at a time."""

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


class Measurements(Protocol):
    """What the deployment measured: the /metrics counters and the calls' costs (sdapi.costs)."""

    def record_metrics(self, samples: Sequence[Sample]) -> None:
        """Add samples (see sdapi.metrics) to the deployment's counters, in one transaction."""
        ...

    def metrics(self) -> list[Sample]:
        """Every counter and bucket the deployment has recorded."""
        ...

    def record_call(
        self, batch_key: str, model_key: str, call: Call, *, cap: int, prior: Cost
    ) -> None:
        """Learn from one call a worker made (see sdapi.costs): kept under its batch key, its
        model+task key and ANY_KEY (the latest OBSERVATIONS each), the costs fitted again
        (`relearn`, towards `prior` where the calls cannot tell), and `cap` kept as the most
        images a call of the batch key makes."""
        ...

    def costs(self, keys: Sequence[str]) -> dict[str, Learned]:
        """What was learned of these keys (those never recorded are left out)."""
        ...


class Workers(Protocol):
    """The live workers: each announces itself and is seen while it runs."""

    def register_worker(self, info: WorkerInfo) -> None: ...

    def worker_seen(self, worker_id: str, state: str) -> None: ...

    def remove_worker(self, worker_id: str) -> None: ...


class Retention(Protocol):
    """Ended jobs whose files are due for removal, and forgetting them after."""

    def expirable(self, *, finished_before: float | None, limit: int) -> list[Job]:
        """Ended jobs whose files are due for removal: finished before `finished_before`
        (None: no retention limit) or temporary and past their `keep_until`; oldest first."""
        ...

    def expire(self, job_ids: Sequence[int]) -> None:
        """Mark ended jobs `expired` (their files are gone); other states are left alone."""
        ...

    def forget(self, *, finished_before: float, limit: int) -> int:
        """Delete up to `limit` expired jobs that finished before then (with their outbox
        events), so history stays bounded; returns how many went. Fetch then answers them as
        unknown."""
        ...


class JobQueue(Jobs, Outbox, Measurements, Workers, Retention, Protocol):
    """Every port on one database (what a backend opens); a consumer takes the one it needs."""

    def close(self) -> None: ...


#: A worker that has not been seen for this long is not counted as live.
WORKER_STALE_S = 30.0


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
