"""An in-process queue for unit tests: the same verbs and guarantees, no durability."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence

from sdapi.jobs import Job, JobStatus, QueueStats
from sdapi.queue.base import (
    ABANDONED_ERROR,
    WORKER_STALE_S,
    Clock,
    NewJob,
    WorkerInfo,
    blend_rate,
    learned_seconds,
    rate_key,
    same_batch,
)


class MemoryQueue:
    def __init__(self, *, max_attempts: int = 3, clock: Clock = time.time) -> None:
        self.max_attempts = max_attempts
        self.clock = clock
        self._jobs: dict[int, Job] = {}
        self._rates: dict[str, float] = {}
        self._call_rows: dict[str, int] = {}
        self._workers: dict[str, float] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

    def enqueue(self, new: NewJob) -> Job:
        with self._lock:
            job = Job(
                id=len(self._jobs) + 1,
                owner=new.owner,
                status=JobStatus.QUEUED,
                request=new.request,
                output_names=new.output_names,
                created_at=self.clock(),
                webhook=new.webhook,
                track_id=new.track_id,
                echo=dict(new.echo),
            )
            self._jobs[job.id] = job
            self._arrived.notify_all()
        return job

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

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
        with self._lock:
            self._reap_expired(now)
            queued = [
                j
                for j in self._jobs.values()
                if j.status is JobStatus.QUEUED
                and (models is None or j.request.model in models)
                and (batch_key is None or j.request.batch_key == batch_key)
            ]
            lease_id = uuid.uuid4().hex
            claimed = [
                job.evolve(
                    status=JobStatus.PROCESSING,
                    attempts=job.attempts + 1,
                    lease_id=lease_id,
                    lease_expires_at=now + lease_s,
                    worker_id=worker_id,
                    started_at=now,
                    progress=0.0,
                )
                for job in same_batch(sorted(queued, key=lambda j: j.id), limit)
            ]
            self._jobs.update((job.id, job) for job in claimed)
        return claimed

    def _reap_expired(self, now: float) -> None:
        for job in list(self._jobs.values()):
            if job.status is not JobStatus.PROCESSING or (job.lease_expires_at or 0) >= now:
                continue
            if job.cancel_requested:
                done = job.evolve(
                    status=JobStatus.CANCELLED,
                    finished_at=now,
                    lease_id=None,
                    lease_expires_at=None,
                )
            elif job.attempts >= self.max_attempts:
                done = job.evolve(
                    status=JobStatus.FAILED,
                    finished_at=now,
                    lease_id=None,
                    lease_expires_at=None,
                    error=ABANDONED_ERROR.format(attempts=job.attempts),
                )
            else:
                done = job.evolve(
                    status=JobStatus.QUEUED,
                    lease_id=None,
                    lease_expires_at=None,
                    worker_id=None,
                    progress=0.0,
                )
            self._jobs[job.id] = done

    def _held(self, job_id: int, lease_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job and job.status is JobStatus.PROCESSING and job.lease_id == lease_id:
            return job
        return None

    def heartbeat(self, lease_id: str, *, lease_s: float, progress: float | None = None) -> int:
        now = self.clock()
        with self._lock:
            held = [
                j
                for j in self._jobs.values()
                if j.lease_id == lease_id and j.status is JobStatus.PROCESSING
            ]
            for job in held:
                self._jobs[job.id] = job.evolve(
                    lease_expires_at=now + lease_s,
                    progress=job.progress if progress is None else progress,
                )
        return len(held)

    def complete(
        self,
        job_id: int,
        lease_id: str,
        *,
        generation_seconds: float,
        cost_seconds: float | None = None,
        call_rows: int = 1,
    ) -> bool:
        with self._lock:
            job = self._held(job_id, lease_id)
            if job is None:
                return False
            self._jobs[job_id] = job.evolve(
                status=JobStatus.SUCCESS,
                finished_at=self.clock(),
                progress=1.0,
                generation_seconds=generation_seconds,
                lease_id=None,
                lease_expires_at=None,
            )
            key = rate_key(job.request.model, job.request.task)
            cost = learned_seconds(generation_seconds, cost_seconds)
            measured = cost / max(job.request.work_units, 1e-9)
            for rate in (job.request.batch_key, key):  # specific, then general
                self._rates[rate] = blend_rate(self._rates.get(rate), measured)
            self._call_rows[job.request.batch_key] = call_rows
        return True

    def fail(self, job_id: int, lease_id: str, *, error: str) -> bool:
        with self._lock:
            job = self._held(job_id, lease_id)
            if job is None:
                return False
            self._jobs[job_id] = job.evolve(
                status=JobStatus.FAILED,
                finished_at=self.clock(),
                error=error,
                lease_id=None,
                lease_expires_at=None,
            )
        return True

    def cancel(self, job_id: int) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status is JobStatus.QUEUED:
                job = job.evolve(status=JobStatus.CANCELLED, finished_at=self.clock())
            elif job.status is JobStatus.PROCESSING:
                job = job.evolve(cancel_requested=True)
            self._jobs[job_id] = job
        return job

    def stop_cancelled(self, lease_id: str) -> list[int]:
        with self._lock:
            stopped = [
                j for j in self._jobs.values()
                if j.lease_id == lease_id and j.status is JobStatus.PROCESSING
                and j.cancel_requested
            ]  # fmt: skip
            for job in stopped:
                self._jobs[job.id] = job.evolve(
                    status=JobStatus.CANCELLED,
                    finished_at=self.clock(),
                    lease_id=None,
                    lease_expires_at=None,
                )
        return sorted(job.id for job in stopped)

    def position(self, job_id: int) -> tuple[int, float] | None:
        job = self._jobs.get(job_id)
        if job is None or job.status is not JobStatus.QUEUED:
            return None
        ahead = [
            j
            for j in self._jobs.values()
            if (j.status is JobStatus.QUEUED and j.id < job_id) or j.status is JobStatus.PROCESSING
        ]
        place = 1 + sum(j.status is JobStatus.QUEUED for j in ahead)
        return place, sum(j.request.work_units * (1 - j.progress) for j in ahead)

    def stats(self) -> QueueStats:
        live = [
            j for j in self._jobs.values() if j.status in (JobStatus.QUEUED, JobStatus.PROCESSING)
        ]
        pending: dict[tuple[str, str], float] = {}
        for job in live:
            key = (job.request.batch_key, rate_key(job.request.model, job.request.task))
            pending[key] = pending.get(key, 0.0) + job.request.work_units * (1 - job.progress)
        cutoff = self.clock() - WORKER_STALE_S
        return QueueStats(
            queued=sum(j.status is JobStatus.QUEUED for j in live),
            processing=sum(j.status is JobStatus.PROCESSING for j in live),
            pending_work=sum(pending.values()),
            live_workers=sum(seen >= cutoff for seen in self._workers.values()),
            pending_by_key=pending,
        )

    def rate(self, key: str) -> float | None:
        return self._rates.get(key)

    def call_rows(self, batch_key: str) -> int:
        return self._call_rows.get(batch_key, 1)

    def wait_for_work(self, timeout: float) -> None:
        with self._arrived:
            self._arrived.wait(timeout)

    def register_worker(self, info: WorkerInfo) -> None:
        self._workers[info.id] = self.clock()

    def worker_seen(self, worker_id: str, state: str) -> None:
        if worker_id in self._workers:
            self._workers[worker_id] = self.clock()

    def remove_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    def close(self) -> None:
        pass
