"""Several models loaded at once within a memory budget; the least recently used goes first.

Torch-free: it only orders engines and asks them their size, so the worker's scheduling logic
and its tests do not depend on the model stack.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)


class CachedEngine(Protocol):
    model: str

    def load(self) -> None: ...

    def memory_bytes(self) -> int:
        """Bytes the loaded weights take on their device."""
        ...

    def unload(self) -> None: ...


E = TypeVar("E", bound=CachedEngine)


class EngineCache(Generic[E]):
    """Engines by model, loaded on first use, evicted least recently used beyond `budget`.

    The engine just used is never evicted, so a model larger than the whole budget still runs
    (alone). `budget_bytes` 0 means one model at a time.
    """

    def __init__(self, factory: Callable[[str], E], budget_bytes: int) -> None:
        self.factory = factory
        self.budget_bytes = budget_bytes
        self._engines: OrderedDict[str, E] = OrderedDict()

    @property
    def loaded(self) -> list[str]:
        """Loaded models, least recently used first."""
        return list(self._engines)

    def get(self, model: str) -> E:
        engine = self._engines.get(model)
        if engine is None:
            engine = self.factory(model)
            engine.load()
            self._engines[model] = engine
            log.info("loaded model %s (%.0f MiB)", model, engine.memory_bytes() / 2**20)
        self._engines.move_to_end(model)
        self._evict()
        return engine

    def _evict(self) -> None:
        while len(self._engines) > 1 and self._total() > self.budget_bytes:
            model, engine = self._engines.popitem(last=False)
            engine.unload()
            log.info("unloaded model %s to stay within %.0f MiB", model, self.budget_bytes / 2**20)

    def _total(self) -> int:
        return sum(engine.memory_bytes() for engine in self._engines.values())


def default_budget(device: str) -> int:
    """Bytes for model weights when not configured: most of the GPU, half the RAM on a CPU."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        return int(torch.cuda.get_device_properties(index).total_memory * 0.8)
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)
