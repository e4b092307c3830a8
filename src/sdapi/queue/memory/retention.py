"""memory: the Retention port (ended jobs due for removal, and forgetting them)."""

from __future__ import annotations

from collections.abc import Iterable

from sdapi.jobs import Job, JobStatus
from sdapi.queue.memory.common import ENDED_STATES, MemoryState


class MemoryRetention(MemoryState):
    def expirable(self, *, finished_before: float | None, limit: int) -> list[Job]:
        now, cutoff = self.clock(), -1.0 if finished_before is None else finished_before
        due = [
            j for j in self._jobs.values()
            if j.status in ENDED_STATES and (
                (j.keep_until is not None and j.keep_until < now)
                or (j.finished_at or 0) < cutoff
            )
        ]  # fmt: skip
        return sorted(due, key=lambda j: j.finished_at or 0)[:limit]

    def expire(self, job_ids: Iterable[int]) -> None:
        with self._lock:
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                if job is not None and job.status in ENDED_STATES:
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
