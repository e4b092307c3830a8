"""Keeping claims alive: a thread that renews leases, reports progress and stops cancelled jobs
while a batch runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from types import TracebackType

from sdapi.jobs import Job
from sdapi.logs import in_context
from sdapi.queue.base import Jobs

log = logging.getLogger(__name__)

#: Progress and cancellations reach the queue at least this often (one write a second).
PROGRESS_EVERY_S = 1.0


class LeaseKeeper:
    """Every second (or `lease_s / 3` if shorter) until closed, for each lease of `jobs`:
    renews it with the batch's progress, and ends the jobs whose owner asked to cancel.

    A job is stopped when its lease was lost (it expired and another worker took the job over)
    or it was cancelled; once every job of the batch is stopped, `all_stopped` is set so the
    generation ends at its next step instead of finishing work nobody will use.
    """

    def __init__(self, queue: Jobs, jobs: Sequence[Job], lease_s: float) -> None:
        self.queue = queue
        self.jobs = list(jobs)
        self.lease_s = lease_s
        self.progress: float | None = None
        self.all_stopped = threading.Event()
        self._lost: set[str] = set()
        self._cancelled: set[int] = set()
        self._stop = threading.Event()
        self._thread = in_context(self._run, "lease-keeper")  # its lines name the batch's jobs

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self._stop.set()
        self._thread.join()

    def stopped(self, job: Job) -> str | None:
        """Why this job's work must be dropped ("cancelled", "lease lost"), or None."""
        if job.id in self._cancelled:
            return "cancelled"
        if job.lease_id in self._lost:
            return "lease lost"
        return None

    def _run(self) -> None:
        leases = list(dict.fromkeys(job.lease_id or "" for job in self.jobs))
        while not self._stop.wait(min(self.lease_s / 3, PROGRESS_EVERY_S)):
            for lease_id in leases:
                if lease_id not in self._lost:
                    self._tend(lease_id)
            if all(self.stopped(job) for job in self.jobs):
                self.all_stopped.set()
                return

    def _tend(self, lease_id: str) -> None:
        try:
            self._cancelled.update(self.queue.stop_cancelled(lease_id))
            held = self.queue.heartbeat(lease_id, lease_s=self.lease_s, progress=self.progress)
        except Exception:  # a missed beat is not fatal; the lease has slack for two more
            log.warning("heartbeat failed for lease %s", lease_id, exc_info=True)
            return
        if held == 0:
            self._lost.add(lease_id)
