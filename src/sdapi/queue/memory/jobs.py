"""memory: the Jobs port (submitting, claiming, running, ending jobs, and where they stand)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from sdapi.catalog.work import batch_key as key_of
from sdapi.jobs import Job, JobStatus, QueueStats, Rendered
from sdapi.metrics import job_ended
from sdapi.queue.base import (
    ABANDONED_ERROR,
    DEADLINE_ERROR,
    WORKER_STALE_S,
    Line,
    NewJob,
    WebhookEvent,
    enforce_caps,
    group_pending,
    pick_batch,
    split_expired,
)
from sdapi.queue.memory.common import MemoryState, OutboxRow


class MemoryJobs(MemoryState):
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
        self._outbox[event.event_id] = OutboxRow(event, "pending", now)

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
