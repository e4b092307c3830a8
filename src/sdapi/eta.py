"""Honest waiting times: the learned cost of every call ahead of a job, shared among the live
workers, and of the job's own call.

Each batch of jobs is priced by the cost its model and task have learned (sdapi.costs), times
its batch key's own factor; a model never run yet is priced by what every call taught
(`ANY_KEY`), and a deployment that has run nothing by the prior. Queued jobs of one key are
expected to share calls of the key's cap, as the workers batch them. A running batch has left
what its progress says of its steps, plus its fixed part (set-up, decode, save) in full: its
ETA reaches that fixed part, never 0, until the job has really ended.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from sdapi.catalog.work import DECODE_STEPS, batch_key, call_steps, work_units
from sdapi.costs import PRIOR_CPU, Cost
from sdapi.jobs import Job, JobStatus, Pending
from sdapi.queue.base import ANY_KEY, JobQueue, Learned, rate_key


@dataclass(frozen=True, slots=True)
class Wait:
    #: Seconds until the job is likely done; 0 once it has ended.
    eta: float
    #: Place in line for a queued job (1 = next), else None.
    position: int | None = None


class Prices:
    """Seconds for groups of pending jobs, from the costs learned for their keys (read once)."""

    def __init__(self, queue: JobQueue, groups: Iterable[Pending]) -> None:
        keys = {ANY_KEY}
        for group in groups:
            keys |= {group.batch_key, group.rate_key}
        self.learned = queue.costs(sorted(keys))

    def cost(self, batch_key: str, rate_key: str) -> Cost:
        """The model's cost (else the deployment's, else the prior), times the key's factor."""
        model = self._known(rate_key) or self._known(ANY_KEY) or PRIOR_CPU
        return model.scaled(self.learned.get(batch_key, Learned()).scale)

    def _known(self, key: str) -> Cost | None:
        learned = self.learned.get(key)
        return learned.cost if learned is not None else None

    def queued(self, group: Pending) -> float:
        """A key's queued jobs, in calls of the key's cap (whole jobs: at least one a call)."""
        cap = self.learned.get(group.batch_key, Learned()).cap
        calls = min(math.ceil(group.images / max(cap, 1)), group.jobs)
        return self.cost(group.batch_key, group.rate_key).seconds(group.units, group.steps, calls)

    def remaining(self, group: Pending) -> float:
        """What a running batch has left: the steps its progress has not reached, and all its
        fixed part (the call's overhead and the decode)."""
        cost = self.cost(group.batch_key, group.rate_key)
        decode_units = group.units * DECODE_STEPS / (group.steps + DECODE_STEPS)
        tail = cost.overhead + cost.per_unit * decode_units
        steps = cost.seconds(group.units, group.steps) - tail
        return (1 - group.progress) * steps + tail

    def price(self, group: Pending) -> float:
        return self.queued(group) if group.worker_id is None else self.remaining(group)


def wait_for(queue: JobQueue, job: Job) -> Wait:
    """Where `job` stands: its place in line and the seconds until it is likely done."""
    if job.status is JobStatus.PROCESSING:
        return Wait(_running(queue, job))
    if job.status is not JobStatus.QUEUED:
        return Wait(0.0)
    line = queue.position(job.id)
    if line is None:  # it was claimed meanwhile
        return Wait(_running(queue, job))
    own = _own_group(job)
    prices = Prices(queue, [*line.ahead, own])
    ahead = sum(prices.price(group) for group in line.ahead)
    return Wait(ahead / max(line.workers, 1) + prices.queued(own), line.place)


def _running(queue: JobQueue, job: Job) -> float:
    """What the job's batch (its batch key's jobs on its worker) has left."""
    batch = [
        group
        for group in queue.stats().pending
        if group.worker_id == job.worker_id and group.batch_key == batch_key(job.request)
    ]
    group = batch[0] if batch and job.worker_id is not None else _own_group(job, running=True)
    return Prices(queue, [group]).remaining(group)


def _own_group(job: Job, running: bool = False) -> Pending:
    request = job.request
    return Pending(
        batch_key=batch_key(request),
        rate_key=rate_key(request.model, request.task),
        worker_id=job.worker_id if running else None,
        jobs=1,
        images=request.samples,
        units=work_units(request),
        steps=call_steps(request),
        started_at=job.started_at,
        progress=job.progress,
    )


def queue_time(queue: JobQueue) -> int:
    """Whole seconds to drain the queue as it stands (system_load's queue_time), shared among
    the live workers."""
    stats = queue.stats()
    prices = Prices(queue, stats.pending)
    seconds = sum(prices.price(group) for group in stats.pending)
    return round(seconds / max(stats.live_workers, 1))
