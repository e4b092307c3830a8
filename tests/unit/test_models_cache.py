"""Several models per worker: LRU within a memory budget, affinity with a bounded wait."""

from __future__ import annotations

from sdapi.engine.cache import EngineCache
from sdapi.jobs import JobStatus
from sdapi.queue.base import NewJob
from sdapi.queue.memory import MemoryQueue
from sdapi.storage.memory import MemoryStore
from sdapi.worker.affinity import Affinity
from sdapi.worker.runner import Worker
from tests.helpers import FakeClock, FakeEngine, make_request


class SizedEngine(FakeEngine):
    def __init__(self, model: str, size: int) -> None:
        super().__init__()
        self.model, self.size = model, size

    def memory_bytes(self) -> int:
        return self.size


def cache(budget: int, sizes: dict[str, int]) -> tuple[EngineCache, dict[str, SizedEngine]]:
    made: dict[str, SizedEngine] = {}

    def factory(model: str) -> SizedEngine:
        made[model] = SizedEngine(model, sizes[model])
        return made[model]

    return EngineCache(factory, budget), made


def test_least_recently_used_model_is_evicted_beyond_the_budget() -> None:
    engines, made = cache(250, {"a": 100, "b": 100, "c": 100})
    engines.get("a")
    engines.get("b")
    engines.get("a")  # a is now the most recent
    engines.get("c")
    assert engines.loaded == ["a", "c"]
    assert getattr(made["b"], "unloads", 0) == 1 and getattr(made["a"], "unloads", 0) == 0
    assert engines.get("a") is made["a"]  # still loaded: not loaded again
    assert made["a"].loads == 1


def test_a_model_larger_than_the_budget_still_runs_alone() -> None:
    engines, _ = cache(50, {"small": 10, "huge": 500})
    engines.get("small")
    engines.get("huge")
    assert engines.loaded == ["huge"]


def test_affinity_prefers_loaded_models_but_takes_turns() -> None:
    clock = FakeClock()
    affinity = Affinity(["a", "b"], fair_every_s=30, clock=clock)
    assert affinity.claim_order(["a"]) == [["a"], ["a", "b"]]
    clock.advance(30)
    assert affinity.claim_order(["a"]) == [["a", "b"]]  # a fair turn: oldest job first
    assert affinity.claim_order(["a"]) == [["a"], ["a", "b"]]
    assert affinity.claim_order([]) == [["a", "b"]]
    assert affinity.claim_order(["b", "a"]) == [["a", "b"]]


def submit(queue: MemoryQueue, model: str, seed: int) -> int:
    request = make_request(model=model, seed=seed)
    return queue.enqueue(NewJob("o", request, (f"generations/{model}-{seed}-0.png",))).id


def test_worker_serves_several_models_with_bounded_preference() -> None:
    queue, store = MemoryQueue(), MemoryStore()
    engines, made = cache(10_000, {"a": 100, "b": 100})
    clock = FakeClock()
    worker = Worker(queue, store, engines, ["a", "b"], lease_s=30, max_batch=1)
    worker.affinity = Affinity(["a", "b"], fair_every_s=30, clock=clock)
    engines.get("a")
    old_b = submit(queue, "b", 1)
    new_a = submit(queue, "a", 2)
    later_a = submit(queue, "a", 3)
    assert worker.run_once()  # prefers the loaded model over the older job
    assert queue.get(new_a).status is JobStatus.SUCCESS  # type: ignore[union-attr]
    assert queue.get(old_b).status is JobStatus.QUEUED  # type: ignore[union-attr]
    clock.advance(30)
    assert worker.run_once()  # its turn came: the oldest job, whatever its model
    assert queue.get(old_b).status is JobStatus.SUCCESS  # type: ignore[union-attr]
    assert worker.run_once()
    assert queue.get(later_a).status is JobStatus.SUCCESS  # type: ignore[union-attr]
    assert [r.model for call in made["b"].calls for r in call] == ["b"]
