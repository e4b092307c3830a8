"""Waking the requests that wait on jobs, the moment the queue says those jobs changed.

A request inside its sync window must answer as soon as its job ends; polling the queue would
make a lone request pay the poll's delay. One thread per API process blocks in the queue's
`wait_for_changes` (PostgreSQL's LISTEN, SQLite's doorbell, a condition in memory) and sets
the asyncio events of the requests waiting on the ids that changed, or of all of them when the
backend cannot tell which, and of all of them when the server starts draining (they answer at
once). Waiters still look at the queue every SAFETY_POLL_S on their own, in case a wake-up was
lost (a notification connection that broke, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator

from sdapi.queue.base import Jobs

log = logging.getLogger(__name__)

#: The longest one wait for changes blocks (the pace at which draining and stopping are seen).
WATCH_S = 0.5
#: A waiter looks at its job at least this often, woken or not.
SAFETY_POLL_S = 2.0


class JobWatch:
    def __init__(self, queue: Jobs, draining: threading.Event | None = None) -> None:
        self.queue = queue
        self.draining = draining or threading.Event()
        self._waiters: dict[int, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching (at the app's start, so the first request finds it listening)."""
        self._thread = threading.Thread(target=self._run, name="job-watch", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def waiting(self, job_id: int) -> Iterator[asyncio.Event]:
        """An event set whenever job `job_id` may have changed, while the block runs. Look at
        the job after entering the block, not before: a change in between is then not missed."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                waiters = self._waiters.get(job_id, set())
                waiters.discard(entry)
                if not waiters:
                    self._waiters.pop(job_id, None)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                changed = self.queue.wait_for_changes(WATCH_S)
            except Exception:  # the waiters' own polling carries them through an outage
                log.warning("cannot watch the queue for changes", exc_info=True)
                self._stop.wait(WATCH_S)
                changed = frozenset()
            if changed is None or changed or self.draining.is_set():
                self._wake(None if self.draining.is_set() else changed)

    def _wake(self, changed: frozenset[int] | None) -> None:
        with self._lock:
            ids = self._waiters.keys() if changed is None else changed & self._waiters.keys()
            entries = [entry for job_id in ids for entry in self._waiters[job_id]]
        for loop, event in entries:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
                loop.call_soon_threadsafe(event.set)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=WATCH_S * 2)
