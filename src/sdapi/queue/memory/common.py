"""What the memory backend's ports share: the state they work on."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sdapi.costs import Call
from sdapi.jobs import Job, JobStatus
from sdapi.metrics import LocalMetrics
from sdapi.queue.base import Clock, Learned, WebhookEvent

ENDED_STATES = (JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class OutboxRow:
    """One outbox row, as the SQL backends keep it."""

    event: WebhookEvent
    state: str
    next_attempt_at: float
    last_error: str | None = None


class MemoryState:
    """The state every port of the backend works on, under one lock."""

    def __init__(self, *, max_attempts: int = 3, clock: Clock = time.time) -> None:
        self.max_attempts = max_attempts
        self.clock = clock
        self._jobs: dict[int, Job] = {}
        self._timings: dict[str, list[Call]] = {}
        self._costs: dict[str, Learned] = {}
        self._workers: dict[str, float] = {}
        self._outbox: dict[str, OutboxRow] = {}
        self._ids = itertools.count(1)  # ids only grow, even once old jobs are forgotten
        self._metrics = LocalMetrics()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        #: Ids changed since the last wait_for_changes, and the condition it waits on.
        self._changes: set[int] = set()
        self._changed = threading.Condition(self._lock)

    def _note_changes(self, job_ids: Iterable[int]) -> None:
        """Wake wait_for_changes (called holding the lock)."""
        self._changes.update(job_ids)
        self._changed.notify_all()
