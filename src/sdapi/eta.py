"""Honest waiting times: measured speed times the work ahead, shared among live workers."""

from __future__ import annotations

from sdapi.jobs import Job, JobStatus
from sdapi.queue.base import JobQueue, rate_key

#: Seconds per work unit (one 512x512 denoising step) assumed until a job of the kind finished.
PRIOR_SECONDS_PER_UNIT = 0.4


def seconds_per_unit(queue: JobQueue, job: Job) -> float:
    return queue.rate(rate_key(job.request.model, job.request.task)) or PRIOR_SECONDS_PER_UNIT


def job_eta(queue: JobQueue, job: Job) -> float:
    """Seconds until `job` is likely done; 0 once it has ended."""
    rate = seconds_per_unit(queue, job)
    own = job.request.work_units
    if job.status is JobStatus.PROCESSING:
        return rate * own * (1 - job.progress)
    if job.status is not JobStatus.QUEUED:
        return 0.0
    place = queue.position(job.id)
    ahead = place[1] if place else 0.0
    workers = max(queue.stats().live_workers, 1)
    return rate * (ahead / workers + own)


def queue_time(queue: JobQueue, default_rate_key: str) -> int:
    """Whole seconds to drain the queue as it stands (system_load's queue_time)."""
    stats = queue.stats()
    rate = queue.rate(default_rate_key) or PRIOR_SECONDS_PER_UNIT
    return round(rate * stats.pending_work / max(stats.live_workers, 1))
