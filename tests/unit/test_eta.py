"""Waiting times come from the measured rate, the work ahead and the live workers."""

from __future__ import annotations

import pytest

from sdapi.eta import PRIOR_SECONDS_PER_UNIT, queue_time, wait_for
from sdapi.queue.base import NewJob, WorkerInfo
from sdapi.queue.memory import MemoryQueue
from tests.helpers import FakeClock, make_request

KEY = "sdapi-tiny|text2img"


def enqueue(queue: MemoryQueue, **changes: object) -> int:
    return queue.enqueue(NewJob("o", make_request(**changes), ("generations/a-0.png",))).id


def test_before_any_measurement_the_prior_is_used() -> None:
    queue = MemoryQueue()
    job = queue.get(enqueue(queue, steps=10))
    assert job is not None
    wait = wait_for(queue, job)
    assert wait.position == 1
    assert wait.eta == pytest.approx(PRIOR_SECONDS_PER_UNIT * job.request.work_units)


def test_measured_rate_work_ahead_and_workers() -> None:
    clock = FakeClock()
    queue = MemoryQueue(clock=clock)
    first = enqueue(queue, steps=8, width=512, height=512)  # 8 units
    [claimed] = queue.claim("w", lease_s=30)
    queue.complete(first, claimed.lease_id or "", generation_seconds=4.0)  # 0.5 s per unit
    running = enqueue(queue, steps=8, width=512, height=512)
    [held] = queue.claim("w", lease_s=30)
    queue.heartbeat(held.lease_id or "", lease_s=30, progress=0.25)
    waiting = enqueue(queue, steps=4, width=512, height=512)  # 4 units
    job = queue.get(waiting)
    assert job is not None
    # one worker: 6 units left on the running job, then its own 4
    assert wait_for(queue, job).eta == pytest.approx(0.5 * (6 + 4))
    for name in ("w1", "w2"):
        queue.register_worker(WorkerInfo(name, "h", 1, "cpu", "sdapi-tiny"))
    assert wait_for(queue, job).eta == pytest.approx(0.5 * (6 / 2 + 4))
    running_job = queue.get(running)
    assert running_job is not None
    assert wait_for(queue, running_job).eta == pytest.approx(0.5 * 6)
    assert wait_for(queue, running_job).position is None
    assert queue_time(queue) == round(0.5 * (6 + 4) / 2)


def test_the_batch_key_rate_wins_over_the_model_rate() -> None:
    queue = MemoryQueue()
    slow = enqueue(queue, steps=10, width=128, height=128)
    [job] = queue.claim("w", lease_s=30)
    queue.complete(slow, job.lease_id or "", generation_seconds=10.0)
    fresh = queue.get(enqueue(queue, steps=10))
    assert fresh is not None
    family = queue.rate(KEY)
    assert wait_for(queue, fresh).eta == pytest.approx(family * fresh.request.work_units)
    [job] = queue.claim("w", lease_s=30)
    queue.complete(fresh.id, job.lease_id or "", generation_seconds=0.5)
    again = queue.get(enqueue(queue, steps=10))
    assert again is not None
    assert wait_for(queue, again).eta == pytest.approx(0.5)  # measured for exactly this key


def test_jobs_sharing_a_call_are_expected_to_finish_together() -> None:
    queue = MemoryQueue()
    first = enqueue(queue, steps=10)
    [job] = queue.claim("w", lease_s=30)
    unit_seconds = 0.1
    units = job.request.work_units
    queue.complete(first, job.lease_id or "", generation_seconds=unit_seconds * units, call_rows=2)
    a, b, c = (queue.get(enqueue(queue, steps=10, seed=s)) for s in (1, 2, 3))
    assert a is not None and b is not None and c is not None
    pair = unit_seconds * 2 * units
    assert wait_for(queue, a).eta == pytest.approx(pair)  # shares the first call with b
    assert wait_for(queue, b).eta == pytest.approx(pair)
    assert wait_for(queue, c).eta == pytest.approx(2 * pair)


def test_queue_time_prices_each_batch_key_at_its_own_rate() -> None:
    queue = MemoryQueue()
    for steps, seconds in ((10, 1.0), (20, 10.0)):  # two shapes, very different speeds
        job_id = enqueue(queue, steps=steps)
        [job] = queue.claim("w", lease_s=30)
        queue.complete(job_id, job.lease_id or "", generation_seconds=seconds)
    enqueue(queue, steps=10)
    enqueue(queue, steps=20)
    assert queue_time(queue) == round(1.0 + 10.0)
