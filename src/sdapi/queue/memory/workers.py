"""memory: the Workers port (the live workers)."""

from __future__ import annotations

from sdapi.queue.base import (
    WorkerInfo,
)
from sdapi.queue.memory.common import MemoryState


class MemoryWorkers(MemoryState):
    def register_worker(self, info: WorkerInfo) -> None:
        self._workers[info.id] = self.clock()

    def worker_seen(self, worker_id: str, state: str) -> None:
        if worker_id in self._workers:
            self._workers[worker_id] = self.clock()

    def remove_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)
