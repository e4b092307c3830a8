"""Honest waiting times: measured speed times the work ahead, shared among live workers."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdapi.jobs import Job, JobStatus
from sdapi.queue.base import JobQueue, rate_key

#: Seconds per work unit (one 512x512 denoising step) assumed until a job of the kind finished.
PRIOR_SECONDS_PER_UNIT = 0.4


@dataclass(frozen=True, slots=True)
class Wait:
    #: Seconds until the job is likely done; 0 once it has ended.
    eta: float
    #: Place in line for a queued job (1 = next), else None.
    position: int | None = None


def seconds_per_unit(queue: JobQueue, job: Job) -> float:
    """The speed measured for the job's batch key, else for its model and task, else a prior."""
    request = job.request
    return (
        queue.rate(request.batch_key)
        or queue.rate(rate_key(request.model, request.task))
        or PRIOR_SECONDS_PER_UNIT
    )


def wait_for(queue: JobQueue, job: Job) -> Wait:
    """Where `job` stands: its place in line and the seconds until it is likely done.

    Work is counted in units (see GenerationRequest.work_units) and rounded up to whole calls:
    a worker runs a fixed number of images per call, and every image of a call finishes when
    the call does.
    """
    rate = seconds_per_unit(queue, job)
    calls = _call_units(queue, job)
    own = job.request.work_units
    if job.status is JobStatus.PROCESSING:
        return Wait(rate * _whole(own, calls) * (1 - job.progress))
    if job.status is not JobStatus.QUEUED:
        return Wait(0.0)
    place = queue.position(job.id)
    if place is None:  # it was claimed meanwhile
        return Wait(rate * _whole(own, calls))
    position, ahead = place
    workers = max(queue.stats().live_workers, 1)
    return Wait(rate * _whole(ahead / workers + own, calls), position)


def _call_units(queue: JobQueue, job: Job) -> float | None:
    """Work units of one full pipeline call when jobs of this batch key share calls."""
    request = job.request
    rows = queue.call_rows(request.batch_key)
    if rows <= request.samples:
        return None  # the job fills its calls alone: its units are its time
    return rows * request.work_units / request.samples


def _whole(units: float, per_call: float | None) -> float:
    """`units` rounded up to whole calls (a tolerance keeps exact multiples exact)."""
    if per_call is None:
        return units
    return math.ceil(units / per_call - 1e-9) * per_call


def queue_time(queue: JobQueue) -> int:
    """Whole seconds to drain the queue as it stands (system_load's queue_time).

    Each batch key's pending work is priced at its own measured rate (else its model's, else
    the prior), shared among the live workers.
    """
    stats = queue.stats()
    seconds = sum(
        units * (queue.rate(batch_key) or queue.rate(family) or PRIOR_SECONDS_PER_UNIT)
        for (batch_key, family), units in stats.pending_by_key.items()
    )
    return round(seconds / max(stats.live_workers, 1))
