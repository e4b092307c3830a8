"""Keeping a claim alive: a thread that renews the lease and reports progress while a job runs."""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from sdapi.queue.base import JobQueue

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews `lease_id` every `lease_s / 3` seconds until closed.

    If the queue says the lease holds no job any more (it expired and another worker took the
    job over), `lost` is set so the generation can stop at its next step instead of finishing
    work whose result would be thrown away.
    """

    def __init__(self, queue: JobQueue, lease_id: str, lease_s: float) -> None:
        self.queue = queue
        self.lease_id = lease_id
        self.lease_s = lease_s
        self.progress: float | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                held = self.queue.heartbeat(
                    self.lease_id, lease_s=self.lease_s, progress=self.progress
                )
            except Exception:  # a missed beat is not fatal; the lease has slack for two more
                log.warning("heartbeat failed for lease %s", self.lease_id, exc_info=True)
                continue
            if held == 0:
                log.warning("lease %s was lost; stopping its generation", self.lease_id)
                self.lost.set()
                return
