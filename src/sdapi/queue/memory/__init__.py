"""An in-process queue for unit tests: the same verbs and guarantees, no durability.

Each port is a module of its own (jobs, outbox, measurements, workers, retention); MemoryQueue
puts them together on one state (sdapi.queue.memory.common.MemoryState).
"""

from __future__ import annotations

import time

from sdapi.queue.base import Clock
from sdapi.queue.memory.common import MemoryState
from sdapi.queue.memory.jobs import MemoryJobs
from sdapi.queue.memory.measurements import MemoryMeasurements
from sdapi.queue.memory.outbox import MemoryOutbox
from sdapi.queue.memory.retention import MemoryRetention
from sdapi.queue.memory.workers import MemoryWorkers


class MemoryQueue(MemoryJobs, MemoryOutbox, MemoryMeasurements, MemoryWorkers, MemoryRetention):
    """Every port on one in-process state."""

    def __init__(self, *, max_attempts: int = 3, clock: Clock = time.time) -> None:
        MemoryState.__init__(self, max_attempts=max_attempts, clock=clock)

    def close(self) -> None:
        pass
