"""Which models a worker asks the queue for: the ones it has loaded, but never forever.

Loading a model costs seconds to minutes, so a worker prefers queued jobs for models it holds.
Preference alone could starve a model nobody holds; so every `fair_every_s` seconds a claim
takes the oldest job of any served model, which bounds how long any job waits for a worker
that serves it (about `fair_every_s` plus one batch and a model load).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

#: Default seconds between fair claims.
FAIR_EVERY_S = 30.0


class Affinity:
    def __init__(
        self,
        served: Sequence[str],
        fair_every_s: float = FAIR_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.served = list(served)
        self.fair_every_s = fair_every_s
        self.clock = clock
        self._last_fair = clock()

    def claim_order(self, loaded: Sequence[str]) -> list[list[str]]:
        """Model lists to claim from, in order, until one gives a job."""
        held = [model for model in self.served if model in loaded]
        now = self.clock()
        if not held or len(held) == len(self.served) or now - self._last_fair >= self.fair_every_s:
            self._last_fair = now
            return [self.served]  # oldest job first, whatever its model
        return [held, self.served]
