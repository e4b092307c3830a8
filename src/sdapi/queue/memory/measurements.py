"""memory: the Measurements port (/metrics counters and the calls' costs)."""

from __future__ import annotations

from collections.abc import Sequence

from sdapi.costs import OBSERVATIONS, Call, Cost
from sdapi.metrics import Sample
from sdapi.queue.base import (
    ANY_KEY,
    Learned,
    relearn,
)
from sdapi.queue.memory.common import MemoryState


class MemoryMeasurements(MemoryState):
    def record_call(
        self, batch_key: str, model_key: str, call: Call, *, cap: int, prior: Cost
    ) -> None:
        with self._lock:
            for key in (batch_key, model_key, ANY_KEY):
                kept = self._timings.setdefault(key, [])
                kept.append(call)
                del kept[:-OBSERVATIONS]
            learned = relearn(lambda key: self._timings.get(key, []), batch_key, model_key, prior)
            for key, (cost, factor) in learned.items():
                cap_of = cap if key == batch_key else 1
                self._costs[key] = Learned(cost, factor, cap_of)

    def costs(self, keys: Sequence[str]) -> dict[str, Learned]:
        return {key: self._costs[key] for key in keys if key in self._costs}

    def record_metrics(self, samples: Sequence[Sample]) -> None:
        self._metrics.add(samples)

    def metrics(self) -> list[Sample]:
        return self._metrics.samples()
