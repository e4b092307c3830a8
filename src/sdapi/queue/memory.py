"""An in-process queue for unit tests: the same verbs and guarantees, no durability."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from sdapi.catalog.work import batch_key as key_of
from sdapi.costs import OBSERVATIONS, Call, Cost
from sdapi.jobs import Job, JobStatus, QueueStats, Rendered
from sdapi.metrics import LocalMetrics, Sample, job_ended, webhook_attempt
from sdapi.queue.base import (
    ABANDONED_ERROR,
    ANY_KEY,
    DEADLINE_ERROR,
    WORKER_STALE_S,
    Clock,
    Learned,
    Line,
    NewJob,
    WebhookEvent,
    WorkerInfo,
    attempt_outcome,
    enforce_caps,
    group_pending,
    pick_batch,
    relearn,
    split_expired,
)

_ENDED = (JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class _Outbox:
    """One outbox row, as the SQL backends keep it."""

    event: WebhookEvent
    state: str
    next_attempt_at: float
    last_error: str | None = None


class MemoryQueue:
    def __init__(self, *, max_attempts: int = 3, clock: Clock = time.time) -> None:
        self.max_attempts = max_attempts
        self.clock = clock
        self._jobs: dict[int, Job] = {}
        self._timings: dict[str, list[Call]] = {}
        self._costs: dict[str, Learned] = {}
        self._workers: dict[str, float] = {}
        self._outbox: dict[str, _Outbox] = {}
        self._ids = itertools.count(1)  # ids only grow, even once old jobs are forgotten
        self._metrics = LocalMetrics()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        #: Ids changed since the last wait_for_changes, and the condition it waits on.
        self._changes: set[int] = set()
        self._changed = threading.Condition(self._lock)

    def enqueue(self, new: NewJob) -> Job:
        with self._lock:
            earlier = self._same_track(new)
            if earlier is not None:
                return earlier
            live = [j for j in self._jobs.values() if not j.status.is_terminal]
            enforce_caps(new, lambda: sum(j.owner == new.owner for j in live), lambda: len(live))
            job = Job(
                id=next(self._ids),
                owner=new.owner,
                status=JobStatus.QUEUED,
                request=new.request,
                output_names=new.output_names,
                created_at=self.clock(),
                webhook=new.webhook,
                track_id=new.track_id,
                echo=new.echo,
                base_url=new.base_url,
                webhook_progress=new.webhook_progress,
                webhook_status=new.webhook_status,
                deadline_at=new.deadline_at,
                keep_until=new.keep_until,
            )
            self._jobs[job.id] = job
            self._arrived.notify_all()
            self._note_changes([job.id])
        return job

    def _note_changes(self, job_ids: Iterable[int]) -> None:
        """Wake wait_for_changes (called holding the lock)."""
        self._changes.update(job_ids)
        self._changed.notify_all()

    def _same_track(self, new: NewJob) -> Job | None:
        if new.track_id is None or new.dedupe_since is None:
            return None
        same = [
            j for j in self._jobs.values()
            if j.owner == new.owner and j.track_id == new.track_id
            and j.created_at >= new.dedupe_since
        ]  # fmt: skip
        return max(same, key=lambda j: j.id) if same else None

    def _end(self, job: Job, now: float, **changes: object) -> None:
        """Store a job's final state, its metrics and, when it has a webhook, its outbox event."""
        self._jobs[job.id] = job = job.evolve(finished_at=now, **changes)
        self._note_changes([job.id])
        r = job.request
        size = f"{r.width}x{r.height}"
        self._metrics.add(job_ended(job.status.value, r.model, size, job.generation_seconds))
        if job.webhook is None:
            return
        if any(o.event.job_id == job.id for o in self._outbox.values()):
            return
        event_id = f"msg_{uuid.uuid4().hex}"
        event = WebhookEvent(event_id, job.id, job.status.value, job.webhook, 0, now)
        self._outbox[event.event_id] = _Outbox(event, "pending", now)

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def claim(
        self,
        worker_id: str,
        *,
        lease_s: float,
        images: int = 1,
        models: Sequence[str] | None = None,
        batch_key: str | None = None,
    ) -> list[Job]:
        now = self.clock()
        with self._lock:
            self._reap_expired(now)
            queued = sorted(
                (
                    j
                    for j in self._jobs.values()
                    if j.status is JobStatus.QUEUED
                    and (models is None or j.request.model in models)
                    and (batch_key is None or key_of(j.request) == batch_key)
                ),
                key=lambda j: j.id,
            )
            rows = [(j.id, key_of(j.request), j.request.samples) for j in queued]
            picked = pick_batch(rows, images, gathering=batch_key is not None)
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
                for job in (self._jobs[job_id] for job_id in picked)
            ]
            self._jobs.update((job.id, job) for job in claimed)
            self._note_changes(picked)
        return claimed

    def _reap_expired(self, now: float) -> None:
        """Expired leases (see `split_expired`), then queued jobs past their deadline."""
        expired_jobs = [
            j for j in self._jobs.values()
            if j.status is JobStatus.PROCESSING and (j.lease_expires_at or 0) < now
        ]  # fmt: skip
        expired = split_expired(
            [(j.id, j.attempts, j.cancel_requested) for j in expired_jobs], self.max_attempts
        )
        released = {"lease_id": None, "lease_expires_at": None}
        for job_id in expired.cancelled:
            self._end(self._jobs[job_id], now, status=JobStatus.CANCELLED, **released)
        for job_id, attempts in expired.abandoned:
            error = ABANDONED_ERROR.format(attempts=attempts)
            self._end(self._jobs[job_id], now, status=JobStatus.FAILED, error=error, **released)
        for job_id in expired.requeued:
            self._jobs[job_id] = self._jobs[job_id].evolve(
                status=JobStatus.QUEUED, worker_id=None, progress=0.0, **released
            )
        self._note_changes(expired.requeued)
        for job in list(self._jobs.values()):
            late = job.deadline_at is not None and job.deadline_at < now
            if job.status is JobStatus.QUEUED and late:
                self._end(job, now, status=JobStatus.FAILED, error=DEADLINE_ERROR)

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
        call_size: int | None = None,
        nsfw: bool = False,
        rendered: Rendered | None = None,
    ) -> bool:
        with self._lock:
            job = self._held(job_id, lease_id)
            if job is None:
                return False
            self._end(
                job,
                self.clock(),
                status=JobStatus.SUCCESS,
                progress=1.0,
                nsfw=nsfw,
                generation_seconds=generation_seconds,
                call_size=call_size,
                rendered=rendered,
                lease_id=None,
                lease_expires_at=None,
            )
        return True

    def record_call(
        self, batch_key: str, model_key: str, call: Call, *, cap: int, prior: Cost
    ) -> None:
        with self._lock:
            for key in (batch_key, model_key, ANY_KEY):
                kept = self._timings.setdefault(key, [])
                kept.append(call)
                del kept[:-OBSERVATIONS]
            learned = relearn(lambda key: self._timings.get(key, []), batch_key, model_key, prior)
            for key, (cost, factor) in learned.items():
                cap_of = cap if key == batch_key else 1
                self._costs[key] = Learned(cost, factor, cap_of)

    def costs(self, keys: Sequence[str]) -> dict[str, Learned]:
        return {key: self._costs[key] for key in keys if key in self._costs}

    def fail(self, job_id: int, lease_id: str, *, error: str) -> bool:
        with self._lock:
            job = self._held(job_id, lease_id)
            if job is None:
                return False
            self._end(
                job,
                self.clock(),
                status=JobStatus.FAILED,
                error=error,
                lease_id=None,
                lease_expires_at=None,
            )
        return True

    def release(self, lease_id: str) -> list[int]:
        self.stop_cancelled(lease_id)
        with self._lock:
            held = [j for j in self._jobs.values() if j.lease_id == lease_id]
            for job in held:
                self._jobs[job.id] = job.evolve(
                    status=JobStatus.QUEUED,
                    attempts=job.attempts - 1,
                    lease_id=None,
                    lease_expires_at=None,
                    worker_id=None,
                    progress=0.0,
                    started_at=None,
                )
            self._arrived.notify_all()
            self._note_changes(job.id for job in held)
        return sorted(job.id for job in held)

    def cancel(self, job_id: int) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status is JobStatus.QUEUED:
                self._end(job, self.clock(), status=JobStatus.CANCELLED)
            elif job.status is JobStatus.PROCESSING:
                self._jobs[job_id] = job.evolve(cancel_requested=True)
                self._note_changes([job_id])
            return self._jobs[job_id]

    def stop_cancelled(self, lease_id: str) -> list[int]:
        with self._lock:
            stopped = [
                j for j in self._jobs.values()
                if j.lease_id == lease_id and j.status is JobStatus.PROCESSING
                and j.cancel_requested
            ]  # fmt: skip
            for job in stopped:
                self._end(
                    job,
                    self.clock(),
                    status=JobStatus.CANCELLED,
                    lease_id=None,
                    lease_expires_at=None,
                )
        return sorted(job.id for job in stopped)

    def recent(self, owner: str, *, limit: int) -> list[Job]:
        mine = [j for j in self._jobs.values() if j.owner == owner]
        return sorted(mine, key=lambda j: -j.id)[:limit]

    def running(self, *, limit: int) -> list[Job]:
        jobs = [j for j in self._jobs.values() if j.status is JobStatus.PROCESSING]
        return sorted(jobs, key=lambda j: j.id)[:limit]

    def position(self, job_id: int) -> Line | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status is not JobStatus.QUEUED:
                return None
            ahead = [
                j
                for j in self._jobs.values()
                if (j.status is JobStatus.QUEUED and j.id < job_id)
                or j.status is JobStatus.PROCESSING
            ]
        place = 1 + sum(j.status is JobStatus.QUEUED for j in ahead)
        return Line(place, group_pending(ahead), self.stats().live_workers)

    def stats(self) -> QueueStats:
        with self._lock:
            live = [
                j
                for j in self._jobs.values()
                if j.status in (JobStatus.QUEUED, JobStatus.PROCESSING)
            ]
            cutoff = self.clock() - WORKER_STALE_S
            workers = sum(seen >= cutoff for seen in self._workers.values())
        return QueueStats(
            queued=sum(j.status is JobStatus.QUEUED for j in live),
            processing=sum(j.status is JobStatus.PROCESSING for j in live),
            live_workers=workers,
            pending=group_pending(live),
        )

    def wait_for_work(self, timeout: float) -> None:
        with self._arrived:
            self._arrived.wait(timeout)

    def wait_for_changes(self, timeout: float) -> frozenset[int] | None:
        with self._changed:
            if not self._changes:
                self._changed.wait(timeout)
            changed, self._changes = frozenset(self._changes), set()
        return changed

    def claim_webhooks(self, *, limit: int, lease_s: float) -> list[WebhookEvent]:
        now = self.clock()
        with self._lock:
            due = sorted(
                (o for o in self._outbox.values() if o.state == "pending"
                 and o.next_attempt_at <= now),
                key=lambda o: o.next_attempt_at,
            )[:limit]  # fmt: skip
            for row in due:
                row.next_attempt_at = now + lease_s
        return [row.event for row in due]

    def record_webhook(
        self, event_id: str, *, delivered: bool, error: str | None = None, retry_at: float | None
    ) -> None:
        with self._lock:
            row = self._outbox.get(event_id)
            if row is None or row.state != "pending":
                return
            row.event = replace(row.event, attempts=row.event.attempts + 1)
            row.last_error = error
            if delivered:
                row.state, status = "delivered", "delivered"
            elif retry_at is not None:
                row.state, status, row.next_attempt_at = "pending", "retrying", retry_at
            else:
                row.state, status = "failed", "failed"
            job = self._jobs[row.event.job_id]
            self._jobs[job.id] = job.evolve(webhook_status=status)
            self._metrics.add(webhook_attempt(attempt_outcome(delivered, retry_at)))

    def expirable(self, *, finished_before: float | None, limit: int) -> list[Job]:
        now, cutoff = self.clock(), -1.0 if finished_before is None else finished_before
        due = [
            j for j in self._jobs.values()
            if j.status in _ENDED and (
                (j.keep_until is not None and j.keep_until < now)
                or (j.finished_at or 0) < cutoff
            )
        ]  # fmt: skip
        return sorted(due, key=lambda j: j.finished_at or 0)[:limit]

    def expire(self, job_ids: Iterable[int]) -> None:
        with self._lock:
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                if job is not None and job.status in _ENDED:
                    self._jobs[job_id] = job.evolve(status=JobStatus.EXPIRED)

    def forget(self, *, finished_before: float, limit: int) -> int:
        with self._lock:
            old = sorted(
                j.id for j in self._jobs.values()
                if j.status is JobStatus.EXPIRED and (j.finished_at or 0) < finished_before
            )[:limit]  # fmt: skip
            for job_id in old:
                del self._jobs[job_id]
            self._outbox = {k: o for k, o in self._outbox.items() if o.event.job_id not in old}
        return len(old)

    def record_metrics(self, samples: Sequence[Sample]) -> None:
        self._metrics.add(samples)

    def metrics(self) -> list[Sample]:
        return self._metrics.samples()

    def register_worker(self, info: WorkerInfo) -> None:
        self._workers[info.id] = self.clock()

    def worker_seen(self, worker_id: str, state: str) -> None:
        if worker_id in self._workers:
            self._workers[worker_id] = self.clock()

    def remove_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    def close(self) -> None:
        pass
