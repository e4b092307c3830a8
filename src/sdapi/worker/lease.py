"""Keeping claims alive: a thread that renews leases and reports progress while a batch runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from types import TracebackType

from sdapi.queue.base import JobQueue

log = logging.getLogger(__name__)


#: Progress reaches the queue at least this often (throttled: one write per second per worker).
PROGRESS_EVERY_S = 1.0


class LeaseKeeper:
    """Renews each of `lease_ids` every second (or `lease_s / 3` if shorter) until closed.

    A lease the queue says holds no job any more (it expired and another worker took the job
    over) is marked lost; once every lease is lost, `all_lost` is set so the generation can stop
    at its next step instead of finishing work whose result would be thrown away.
    """

    def __init__(self, queue: JobQueue, lease_ids: Iterable[str], lease_s: float) -> None:
        self.queue = queue
        self.lease_ids = list(dict.fromkeys(lease_ids))
        self.lease_s = lease_s
        self.progress: float | None = None
        self.all_lost = threading.Event()
        self._lost: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self._stop.set()
        self._thread.join()

    def lost(self, lease_id: str | None) -> bool:
        return lease_id in self._lost

    def _run(self) -> None:
        while not self._stop.wait(min(self.lease_s / 3, PROGRESS_EVERY_S)):
            for lease_id in self.lease_ids:
                if lease_id not in self._lost:
                    self._renew(lease_id)
            if len(self._lost) == len(self.lease_ids):
                self.all_lost.set()
                return

    def _renew(self, lease_id: str) -> None:
        try:
            held = self.queue.heartbeat(lease_id, lease_s=self.lease_s, progress=self.progress)
        except Exception:  # a missed beat is not fatal; the lease has slack for two more
            log.warning("heartbeat failed for lease %s", lease_id, exc_info=True)
            return
        if held == 0:
            log.warning("lease %s was lost: another worker has its jobs", lease_id)
            self._lost.add(lease_id)
