"""The worker loop on memory backends: outcomes, failures, lost leases."""

from __future__ import annotations

import threading
import time

import pytest

from sdapi.catalog.work import batch_key
from sdapi.errors import DatabaseUnavailable
from sdapi.jobs import JobStatus
from sdapi.queue.base import NewJob
from sdapi.queue.memory import MemoryQueue
from sdapi.storage.memory import MemoryStore
from sdapi.worker import runner
from sdapi.worker.runner import Worker
from tests.helpers import FakeEngine, make_request


def enqueue(queue: MemoryQueue, **changes: object) -> int:
    request = make_request(**changes)
    names = tuple(f"generations/job-{request.seed}-{i}.png" for i in range(request.samples))
    return queue.enqueue(NewJob("owner", request, names)).id


def test_success_writes_every_promised_file() -> None:
    queue, store = MemoryQueue(), MemoryStore()
    job_id = enqueue(queue, samples=3)
    assert Worker.for_engine(queue, store, FakeEngine(), lease_s=30).run_once()
    job = queue.get(job_id)
    assert job is not None and job.status is JobStatus.SUCCESS
    assert sorted(store.files) == sorted(job.output_names)
    assert all(data.startswith(b"\x89PNG") for data in store.files.values())


def test_engine_error_fails_the_job_with_its_reason() -> None:
    queue, store = MemoryQueue(), MemoryStore()
    job_id = enqueue(queue)
    Worker.for_engine(
        queue, store, FakeEngine(fail_with="CUDA out of memory"), lease_s=30
    ).run_once()
    job = queue.get(job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert job.error == "RuntimeError: CUDA out of memory"
    assert store.files == {}


def test_missing_input_image_fails_cleanly() -> None:
    queue, store = MemoryQueue(), MemoryStore()
    job_id = enqueue(queue, init_image="inputs/gone-init.png", strength=0.5)
    Worker.for_engine(queue, store, FakeEngine(), lease_s=30).run_once()
    job = queue.get(job_id)
    assert job is not None and job.status is JobStatus.FAILED and "missing" in (job.error or "")


class LosingQueue(MemoryQueue):
    """A queue whose heartbeats say the lease is gone (another worker took the job over)."""

    def heartbeat(self, lease_id: str, *, lease_s: float, progress: float | None = None) -> int:
        return 0


class SlowEngine(FakeEngine):
    def generate_batch(self, requests, images, rows, on_step=None):  # type: ignore[no-untyped-def]
        for step in range(1000):
            if on_step is not None and not on_step(step + 1, 1000):
                raise RuntimeError("interrupted")
            threading.Event().wait(0.01)
        raise AssertionError("the lost lease should have stopped the generation")


def test_a_lost_lease_stops_generation_and_records_nothing() -> None:
    queue, store = LosingQueue(), MemoryStore()
    job_id = enqueue(queue)
    Worker.for_engine(queue, store, SlowEngine(), lease_s=0.3).run_once()
    job = queue.get(job_id)
    assert job is not None and job.status is JobStatus.PROCESSING  # untouched: not ours any more
    assert store.files == {}


def test_worker_ignores_jobs_for_other_models() -> None:
    queue, store = MemoryQueue(), MemoryStore()
    enqueue(queue, model="someone-else")
    assert not Worker.for_engine(queue, store, FakeEngine(), lease_s=30).run_once()


def test_run_stops_when_asked_and_deregisters() -> None:
    queue, store = MemoryQueue(), MemoryStore()
    stop = threading.Event()
    worker = Worker.for_engine(queue, store, FakeEngine(), lease_s=30)
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    job_id = enqueue(queue)
    while queue.get(job_id).status is not JobStatus.SUCCESS:  # type: ignore[union-attr]
        threading.Event().wait(0.01)
    assert queue.stats().live_workers == 1
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and queue.stats().live_workers == 0


class FlakyQueue(MemoryQueue):
    """A queue whose database is down for the first `outages` claims."""

    def __init__(self, outages: int) -> None:
        super().__init__()
        self.outages = outages

    def claim(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.outages:
            self.outages -= 1
            raise DatabaseUnavailable(detail="connection refused")
        return super().claim(*args, **kwargs)


def test_worker_rides_out_a_database_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "OUTAGE_RETRY_S", 0.01)
    queue, store = FlakyQueue(outages=3), MemoryStore()
    job_id = enqueue(queue)
    stop = threading.Event()
    thread = threading.Thread(
        target=Worker.for_engine(queue, store, FakeEngine(), lease_s=30).run, args=(stop,)
    )
    thread.start()
    deadline = time.monotonic() + 10
    while queue.get(job_id).status is not JobStatus.SUCCESS:  # type: ignore[union-attr]
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=5)
    assert queue.outages == 0


def test_compatible_jobs_run_as_one_batch() -> None:
    queue, store, engine = MemoryQueue(), MemoryStore(), FakeEngine()
    ids = [enqueue(queue, seed=i) for i in range(4)]  # 64 px on a CPU: 4 images per call
    other = enqueue(queue, seed=9, width=128)
    assert Worker.for_engine(queue, store, engine, lease_s=30).run_once()
    assert [[r.seed for r in call] for call in engine.calls] == [[0, 1, 2, 3]]
    done = [queue.get(i) for i in ids]
    assert all(j is not None and j.status is JobStatus.SUCCESS for j in done)
    assert queue.get(other).status is JobStatus.QUEUED  # type: ignore[union-attr]
    assert len(store.files) == 4


def test_max_batch_one_disables_batching() -> None:
    queue, store, engine = MemoryQueue(), MemoryStore(), FakeEngine()
    for i in range(3):
        enqueue(queue, seed=i)
    worker = Worker.for_engine(queue, store, engine, lease_s=30, max_batch=1)
    while worker.run_once():
        pass
    assert [len(call) for call in engine.calls] == [1, 1, 1]


def test_a_burst_arriving_during_the_wait_joins_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue, store, engine = MemoryQueue(), MemoryStore(), FakeEngine()
    enqueue(queue, seed=1)
    enqueue(queue, seed=2)  # company: a burst is arriving, so the batch waits for more of it
    monkeypatch.setattr(runner.time, "sleep", lambda s: enqueue(queue, seed=3))
    Worker.for_engine(queue, store, engine, lease_s=30, batch_wait=0.05).run_once()
    assert [[r.seed for r in call] for call in engine.calls] == [[1, 2, 3]]


def test_a_lone_job_never_waits_for_company(monkeypatch: pytest.MonkeyPatch) -> None:
    queue, store, engine = MemoryQueue(), MemoryStore(), FakeEngine()
    enqueue(queue, seed=1)

    def no_sleep(seconds: float) -> None:
        raise AssertionError("a lone job waited for company")

    monkeypatch.setattr(runner.time, "sleep", no_sleep)
    Worker.for_engine(queue, store, engine, lease_s=30, batch_wait=0.05).run_once()
    assert [[r.seed for r in call] for call in engine.calls] == [[1]]


class OneLeaseLostQueue(MemoryQueue):
    """The first job's lease is taken over by someone else mid-batch."""

    def heartbeat(self, lease_id: str, *, lease_s: float, progress: float | None = None) -> int:
        if lease_id == self._jobs[min(self._jobs)].lease_id:
            return 0
        return super().heartbeat(lease_id, lease_s=lease_s, progress=progress)


def test_a_job_whose_lease_was_lost_is_dropped_from_its_batch() -> None:
    queue, store = OneLeaseLostQueue(), MemoryStore()
    first = enqueue(queue, seed=1, steps=40)
    second = enqueue(queue, seed=2, steps=40)
    Worker.for_engine(queue, store, SlowSteps(), lease_s=0.3).run_once()
    assert queue.get(first).status is JobStatus.PROCESSING  # type: ignore[union-attr]
    assert queue.get(second).status is JobStatus.SUCCESS  # type: ignore[union-attr]
    assert sorted(store.files) == ["generations/job-2-0.png"]


class SlowSteps(FakeEngine):
    def generate_batch(self, requests, images, rows, on_step=None):  # type: ignore[no-untyped-def]
        wrapped = None
        if on_step is not None:

            def wrapped(done: int, total: int) -> bool:
                time.sleep(0.02)
                return on_step(done, total)

        return super().generate_batch(requests, images, rows, wrapped)


def test_a_lone_job_runs_in_a_call_of_its_own_size_and_teaches_its_cost() -> None:
    queue, store, engine = MemoryQueue(), MemoryStore(), FakeEngine()
    job_id = enqueue(queue, seed=1, samples=3)  # 64 px on a CPU: calls of up to 8 images
    Worker.for_engine(queue, store, engine, lease_s=30).run_once()
    assert engine.rows == [None], "no padding: the call makes the job's 3 images, no more"
    job = queue.get(job_id)
    assert job is not None and job.call_size == 3
    learned = queue.costs([batch_key(job.request), "sdapi-tiny|text2img"])
    assert learned[batch_key(job.request)].cap == 8
    assert learned["sdapi-tiny|text2img"].cost is not None


def test_batched_jobs_report_the_size_of_their_shared_call() -> None:
    queue, store = MemoryQueue(), MemoryStore()
    ids = [enqueue(queue, seed=s, samples=2) for s in (1, 2)]
    Worker.for_engine(queue, store, FakeEngine(), lease_s=30).run_once()
    assert [queue.get(i).call_size for i in ids] == [4, 4]  # type: ignore[union-attr]


def test_a_job_asking_for_a_call_size_runs_padded_to_it() -> None:
    queue, store, engine = MemoryQueue(), MemoryStore(), FakeEngine()
    job_id = enqueue(queue, seed=1, call_size=4)
    Worker.for_engine(queue, store, engine, lease_s=30).run_once()
    assert engine.rows == [4]
    assert queue.get(job_id).call_size == 4  # type: ignore[union-attr]


def test_a_call_holds_whole_jobs_up_to_the_cap() -> None:
    queue, store, engine = MemoryQueue(), MemoryStore(), FakeEngine()
    for seed in (1, 2, 3):
        enqueue(queue, seed=seed * 10, samples=3)  # 9 images; the cap is 8 at 64 px
    worker = Worker.for_engine(queue, store, engine, lease_s=30)
    while worker.run_once():
        pass
    assert [[r.samples for r in call] for call in engine.calls] == [[3, 3], [3]]


def test_progress_reaches_the_queue_while_a_job_runs() -> None:
    queue, store = MemoryQueue(), MemoryStore()
    job_id = enqueue(queue, steps=150)  # about 3 s at 20 ms a step
    seen: list[float] = []
    thread = threading.Thread(
        target=Worker.for_engine(queue, store, SlowSteps(), lease_s=30).run_once
    )
    thread.start()
    while thread.is_alive():
        job = queue.get(job_id)
        if job is not None and job.status is JobStatus.PROCESSING:
            seen.append(job.progress)
        time.sleep(0.05)
    assert any(0 < p < 1 for p in seen), "progress is reported before the job ends"
    assert seen == sorted(seen)


def test_a_running_job_cancelled_by_its_owner_stops_early() -> None:
    queue, store = MemoryQueue(), MemoryStore()
    job_id = enqueue(queue, steps=500)  # about 10 s at 20 ms a step
    engine = SlowSteps()
    thread = threading.Thread(target=Worker.for_engine(queue, store, engine, lease_s=30).run_once)
    thread.start()
    while queue.get(job_id).progress == 0:  # type: ignore[union-attr]
        time.sleep(0.02)
    queue.cancel(job_id)
    thread.join(timeout=8)
    assert not thread.is_alive(), "the generation stopped at a step, not at its end"
    assert queue.get(job_id).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert store.files == {}


def test_a_worker_out_of_drain_time_hands_its_batch_back() -> None:
    queue, store = MemoryQueue(), MemoryStore()
    job_id = enqueue(queue, steps=500)
    worker = Worker.for_engine(queue, store, SlowSteps(), lease_s=30)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    while queue.get(job_id).progress == 0:  # type: ignore[union-attr]
        time.sleep(0.02)
    worker.abandon.set()  # what the shutdown timer does when the drain time is up
    thread.join(timeout=8)
    assert not thread.is_alive(), "the generation stopped at a step"
    job = queue.get(job_id)
    assert job is not None and job.status is JobStatus.QUEUED and job.attempts == 0
    assert store.files == {}
