"""Waiting times: each call ahead priced by its learned cost (with fallbacks), shared among the
live workers; a running job always has its fixed part left."""

from __future__ import annotations

import pytest

from sdapi.catalog.work import batch_key, call_steps, work_units
from sdapi.costs import PRIOR_CPU, Call, Cost
from sdapi.eta import queue_time, wait_for
from sdapi.jobs import GenerationRequest, Job
from sdapi.queue.base import ANY_KEY, NewJob, WorkerInfo, rate_key
from sdapi.queue.memory import MemoryQueue
from tests.helpers import FakeClock, make_request

MODEL_KEY = "sdapi-tiny|text2img"
COST = Cost(overhead=0.5, per_step=0.05, per_unit=0.2)


def enqueue(queue: MemoryQueue, **changes: object) -> Job:
    return queue.enqueue(NewJob("o", make_request(**changes), ("generations/a-0.png",)))


def teach(queue: MemoryQueue, request: GenerationRequest, seconds: float, cap: int = 1) -> None:
    """One call of `request` that took `seconds`, as a worker records it."""
    call = Call(work_units(request), call_steps(request), seconds)
    key = rate_key(request.model, request.task)
    queue.record_call(batch_key(request), key, call, cap=cap, prior=PRIOR_CPU)


def cost_of(request: GenerationRequest, cost: Cost = COST) -> float:
    return cost.seconds(work_units(request), call_steps(request))


def shapes() -> list[GenerationRequest]:
    return [
        make_request(width=side, height=side, steps=steps, samples=images)
        for side in (64, 256, 512)
        for steps in (10, 30)
        for images in (1, 4)
    ]


def test_before_any_call_the_prior_prices_the_job() -> None:
    queue = MemoryQueue()
    job = enqueue(queue, steps=10)
    wait = wait_for(queue, job)
    assert wait.position == 1
    assert wait.eta == pytest.approx(cost_of(job.request, PRIOR_CPU))


def test_a_model_learned_on_other_shapes_prices_a_new_one() -> None:
    queue = MemoryQueue()
    for request in shapes():
        teach(queue, request, cost_of(request))
    job = enqueue(queue, width=384, height=384, steps=20, samples=2)  # never run
    assert wait_for(queue, job).eta == pytest.approx(cost_of(job.request), rel=0.1)


def test_after_one_call_of_a_shape_its_batch_key_is_predicted_from_it() -> None:
    queue = MemoryQueue()
    for request in shapes():
        teach(queue, request, cost_of(request))
    odd = make_request(width=384, height=384, steps=20, scheduler="DDIMScheduler")
    teach(queue, odd, 3 * cost_of(odd))  # this scheduler is 3x slower than the model predicts
    slow = enqueue(queue, **_fields(odd))
    assert wait_for(queue, slow).eta == pytest.approx(3 * cost_of(odd), rel=0.1)
    queue.cancel(slow.id)
    other = enqueue(queue, width=384, height=384, steps=20)  # the model's own pace holds
    assert wait_for(queue, other).eta == pytest.approx(cost_of(other.request), rel=0.1)


def test_a_model_never_run_is_priced_by_every_call_so_far() -> None:
    queue = MemoryQueue()
    for request in shapes():
        teach(queue, request, cost_of(request))
    assert queue.costs([ANY_KEY])[ANY_KEY].cost is not None
    job = enqueue(queue, model="another-model", steps=30)
    assert wait_for(queue, job).eta == pytest.approx(cost_of(job.request), rel=0.1)


def test_one_slow_call_does_not_skew_the_etas_that_follow() -> None:
    queue = MemoryQueue()
    request = make_request(width=256, height=256, steps=20)
    for seconds in (2.0, 2.1, 1.9, 2.0, 16.0):  # the last one stalled
        teach(queue, request, seconds)
    assert wait_for(queue, enqueue(queue, **_fields(request))).eta == pytest.approx(2.0, rel=0.1)


def test_work_ahead_is_shared_among_live_workers() -> None:
    clock = FakeClock()
    queue = MemoryQueue(clock=clock)
    request = make_request(width=512, height=512, steps=8)
    teach(queue, request, 4.0)
    first = enqueue(queue, **_fields(request, seed=1))
    enqueue(queue, **_fields(request, seed=2))
    waiting = enqueue(queue, **_fields(request, seed=3))
    one = wait_for(queue, waiting)
    assert one.position == 3
    assert one.eta == pytest.approx(3 * 4.0, rel=0.05)
    for name in ("w1", "w2"):
        queue.register_worker(WorkerInfo(name, "h", 1, "cpu", "sdapi-tiny"))
    assert wait_for(queue, waiting).eta == pytest.approx(2 * 4.0 / 2 + 4.0, rel=0.05)
    assert queue.get(first.id) is not None


def test_queued_jobs_of_one_key_are_expected_to_share_calls_of_its_cap() -> None:
    queue = MemoryQueue()
    for request in shapes():
        teach(queue, request, cost_of(request), cap=4)
    jobs = [enqueue(queue, steps=10, seed=s) for s in range(5)]
    # Four share the first call (one overhead and one set of steps), the fifth runs next.
    pair = COST.seconds(4 * work_units(jobs[0].request), 10)
    single = cost_of(jobs[0].request)
    assert wait_for(queue, jobs[4]).eta == pytest.approx(pair + single, rel=0.1)


def test_a_running_job_has_its_steps_left_and_never_less_than_its_fixed_part() -> None:
    queue = MemoryQueue()
    request = make_request(width=512, height=512, steps=20)
    for r in shapes():
        teach(queue, r, cost_of(r))
    job = enqueue(queue, **_fields(request))
    [held] = queue.claim("w", lease_s=30)
    total = wait_for(queue, held).eta
    assert total == pytest.approx(cost_of(request), rel=0.1)
    queue.heartbeat(held.lease_id or "", lease_s=30, progress=0.5)
    half = wait_for(queue, queue.get(job.id))  # type: ignore[arg-type]
    assert 0.4 * total < half.eta < 0.7 * total
    assert half.position is None
    queue.heartbeat(held.lease_id or "", lease_s=30, progress=1.0)  # decoding and saving now
    tail = wait_for(queue, queue.get(job.id)).eta  # type: ignore[arg-type]
    assert 0 < tail < 0.3 * total


def test_queue_time_prices_each_key_at_its_own_cost() -> None:
    queue = MemoryQueue()
    fast, slow = make_request(steps=10), make_request(steps=20)
    teach(queue, fast, 1.0)
    teach(queue, slow, 10.0)
    enqueue(queue, **_fields(fast))
    enqueue(queue, **_fields(slow))
    assert queue_time(queue) == pytest.approx(11.0, abs=1.5)


def _fields(request: GenerationRequest, **changes: object) -> dict[str, object]:
    from dataclasses import asdict

    return {**asdict(request), **changes}
