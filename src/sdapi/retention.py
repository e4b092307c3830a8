"""Removing outputs past their time: the retention setting and temporary (`temp`) links.

Files go first, then the job is marked expired: a crash in between leaves a job whose next
sweep deletes nothing more and marks it (deleting is idempotent), never an `expired` job whose
files linger. Expired jobs keep their row (fetch answers "expired") until `--forget-after`,
then the row goes too, so history stays bounded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sdapi.background import Loop
from sdapi.jobs import Job
from sdapi.queue.base import Retention
from sdapi.storage.base import ImageStore

log = logging.getLogger(__name__)

#: Jobs handled per database round trip.
SWEEP_BATCH = 100
#: The slowest a sweep comes round; shorter retentions sweep more often (a tenth of it).
MAX_SWEEP_INTERVAL_S = 60.0


def job_files(job: Job) -> list[str]:
    """Every file a job owns: its outputs and the stored copies of its inputs."""
    inputs = (job.request.init_image, job.request.mask_image)
    return [*job.output_names, *(name for name in inputs if name)]


class RetentionSweeper:
    def __init__(
        self,
        queue: Retention,
        images: ImageStore,
        *,
        retention_s: float,
        temp_ttl_s: float = MAX_SWEEP_INTERVAL_S,
        forget_after_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.images = images
        self.retention_s = retention_s
        self.forget_after_s = forget_after_s
        self.clock = clock
        shortest = min(t for t in (retention_s, temp_ttl_s) if t) if retention_s else temp_ttl_s
        every = min(MAX_SWEEP_INTERVAL_S, max(shortest / 10, 1.0))
        self._loop = Loop("retention-sweeper", self.sweep, every)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def sweep(self) -> int:
        """Expire one batch of due jobs; how many (the loop comes straight back while > 0)."""
        before = self.clock() - self.retention_s if self.retention_s else None
        due = self.queue.expirable(finished_before=before, limit=SWEEP_BATCH)
        for job in due:
            for name in job_files(job):
                self.images.delete(name)
        self.queue.expire([job.id for job in due])
        if due:
            log.info("retention: removed the files of %d jobs", len(due))
        return len(due) + self._forget()

    def _forget(self) -> int:
        """Expired jobs past the history window lose their rows too: history stays bounded."""
        if not self.forget_after_s:
            return 0
        before = self.clock() - self.forget_after_s
        forgotten = self.queue.forget(finished_before=before, limit=SWEEP_BATCH)
        if forgotten:
            log.info("retention: forgot %d expired jobs", forgotten)
        return forgotten
