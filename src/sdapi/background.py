"""A step run over and over in a thread of its own: the API process's housekeeping."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Loop:
    """Runs `step` until stopped: again at once while it reports work done (a count above 0),
    after `idle_s` otherwise. A step that raises is logged and tried again after `idle_s`: a
    database outage must pause housekeeping, never end it."""

    def __init__(self, name: str, step: Callable[[], int], idle_s: float) -> None:
        self.name = name
        self.step = step
        self.idle_s = idle_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                done = self.step()
            except Exception:
                log.exception("%s: step failed (will retry)", self.name)
                done = 0
            if not done:
                self._stop.wait(self.idle_s)
