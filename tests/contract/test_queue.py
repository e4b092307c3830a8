"""The queue contract: every backend must pass every test here."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from sdapi.catalog.work import batch_key, work_units
from sdapi.costs import OBSERVATIONS, PRIOR_CPU, Call, Cost, fit
from sdapi.jobs import Echo, JobStatus, Pending, Rendered
from sdapi.queue.base import ANY_KEY, JobQueue, NewJob, WorkerInfo
from tests.helpers import FakeClock, make_request

LEASE = 30.0
#: A wait that returns well before this was woken, not timed out.
WAKE_TIMEOUT = 10.0


def submit(queue: JobQueue, owner: str = "key_a", **changes: object) -> int:
    request = make_request(**changes)
    names = tuple(f"generations/x{i}.png" for i in range(request.samples))
    echo = Echo(file_prefix="x", init_image="https://example.com/a.png", notes={"vae": "why"})
    new = NewJob(owner, request, names, track_id="t1", echo=echo, base_url="http://h:1")
    return queue.enqueue(replace(new, webhook_progress=True)).id


def test_enqueue_assigns_growing_integer_ids_and_keeps_everything(queue: JobQueue) -> None:
    first, second = submit(queue), submit(queue, samples=2, prompt="two")
    assert isinstance(first, int) and second > first
    job = queue.get(second)
    assert job is not None and job.status is JobStatus.QUEUED
    assert job.request == make_request(samples=2, prompt="two")
    assert job.output_names == ("generations/x0.png", "generations/x1.png")
    assert (job.owner, job.track_id, job.base_url, job.webhook_progress) == (
        "key_a", "t1", "http://h:1", True
    )  # fmt: skip
    assert job.echo == Echo("x", "https://example.com/a.png", notes={"vae": "why"})
    assert queue.get(second + 100) is None


def test_claim_takes_oldest_first_and_leases_it(queue: JobQueue, clock: FakeClock) -> None:
    a, b = submit(queue), submit(queue)
    [job] = queue.claim("w1", lease_s=LEASE)
    assert job.id == a and job.status is JobStatus.PROCESSING
    assert job.attempts == 1 and job.worker_id == "w1" and job.lease_id
    assert job.lease_expires_at == clock.now + LEASE
    assert queue.claim("w2", lease_s=LEASE)[0].id == b
    assert queue.claim("w3", lease_s=LEASE) == []


def test_claim_many_gathers_only_compatible_jobs(queue: JobQueue) -> None:
    a = submit(queue)
    submit(queue, width=128)
    c = submit(queue, prompt="other prompt, same batch key", seed=7)
    claimed = queue.claim("w1", lease_s=LEASE, images=4)
    assert [j.id for j in claimed] == [a, c]
    assert len({j.lease_id for j in claimed}) == 1


def test_a_claim_takes_whole_jobs_while_their_images_fit(queue: JobQueue) -> None:
    big = submit(queue, samples=4)
    two = submit(queue, samples=2)
    submit(queue, samples=1)
    # The first job is taken whatever its size; the next ones only while they fit, in order.
    assert [j.id for j in queue.claim("w", lease_s=LEASE, images=2)] == [big]
    assert [j.id for j in queue.claim("w", lease_s=LEASE, images=2)] == [two]
    key = batch_key(make_request())
    assert queue.claim("w", lease_s=LEASE, images=0, batch_key=key) == []  # gathering: fits only


def test_concurrent_claims_never_share_a_job(queue: JobQueue) -> None:
    ids = {submit(queue) for _ in range(40)}
    got: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while jobs := queue.claim(name, lease_s=LEASE):
            with lock:
                got.extend(j.id for j in jobs)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)


def test_complete_needs_the_current_lease(queue: JobQueue) -> None:
    job_id = submit(queue)
    [job] = queue.claim("w1", lease_s=LEASE)
    assert not queue.complete(job_id, "not-the-lease", generation_seconds=1.0)
    assert queue.complete(job_id, job.lease_id or "", generation_seconds=2.5)
    done = queue.get(job_id)
    assert done is not None and done.status is JobStatus.SUCCESS
    assert done.generation_seconds == 2.5 and done.progress == 1.0 and done.finished_at
    # A second outcome for the same job is refused: exactly one terminal state.
    assert not queue.complete(job_id, job.lease_id or "", generation_seconds=1.0)
    assert not queue.fail(job_id, job.lease_id or "", error="late")
    assert queue.get(job_id).status is JobStatus.SUCCESS  # type: ignore[union-attr]


def test_fail_records_the_error(queue: JobQueue) -> None:
    job_id = submit(queue)
    [job] = queue.claim("w1", lease_s=LEASE)
    assert queue.fail(job_id, job.lease_id or "", error="RuntimeError: boom")
    failed = queue.get(job_id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error == "RuntimeError: boom"


def test_heartbeat_extends_the_lease_and_records_progress(
    queue: JobQueue, clock: FakeClock
) -> None:
    job_id = submit(queue)
    [job] = queue.claim("w1", lease_s=LEASE)
    clock.advance(LEASE - 1)
    assert queue.heartbeat(job.lease_id or "", lease_s=LEASE, progress=0.5) == 1
    clock.advance(LEASE - 1)  # past the first expiry, within the renewed one
    assert queue.claim("w2", lease_s=LEASE) == []
    held = queue.get(job_id)
    assert held is not None and held.progress == 0.5 and held.worker_id == "w1"
    assert queue.heartbeat("unknown-lease", lease_s=LEASE) == 0


def test_expired_lease_goes_back_to_the_queue_and_old_holder_loses_it(
    queue: JobQueue, clock: FakeClock
) -> None:
    job_id = submit(queue)
    [first] = queue.claim("w1", lease_s=LEASE)
    clock.advance(LEASE + 1)
    [second] = queue.claim("w2", lease_s=LEASE)
    assert second.id == job_id and second.attempts == 2 and second.lease_id != first.lease_id
    assert queue.heartbeat(first.lease_id or "", lease_s=LEASE) == 0
    assert not queue.complete(job_id, first.lease_id or "", generation_seconds=1)
    assert queue.complete(job_id, second.lease_id or "", generation_seconds=1)


def test_job_fails_after_max_attempts(queue: JobQueue, clock: FakeClock) -> None:
    job_id = submit(queue)
    for _ in range(3):
        assert queue.claim("w", lease_s=LEASE)
        clock.advance(LEASE + 1)
    assert queue.claim("w", lease_s=LEASE) == []
    job = queue.get(job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert "interrupted 3 times" in (job.error or "")


def test_position_counts_queued_jobs_ahead_and_the_work_left(queue: JobQueue) -> None:
    a = submit(queue)
    b = submit(queue, samples=2)
    c = submit(queue)
    first = queue.position(a)
    assert first is not None and (first.place, first.ahead) == (1, ())
    [running] = queue.claim("w", lease_s=LEASE)
    assert running.id == a
    assert queue.heartbeat(running.lease_id or "", lease_s=LEASE, progress=0.5) == 1
    unit = work_units(make_request())
    key, model_key = batch_key(make_request()), "sdapi-tiny|text2img"
    line_b = queue.position(b)
    assert line_b is not None and line_b.place == 1
    assert line_b.ahead == (
        Pending(key, model_key, "w", 1, 1, pytest.approx(unit), 2, running.started_at, 0.5),
    )
    line_c = queue.position(c)
    assert line_c is not None and line_c.place == 2
    assert sorted(line_c.ahead, key=lambda g: g.worker_id or "") == [
        Pending(key, model_key, None, 1, 2, pytest.approx(2 * unit), 2),
        Pending(key, model_key, "w", 1, 1, pytest.approx(unit), 2, running.started_at, 0.5),
    ]
    assert queue.position(a) is None  # not queued any more


def test_stats_and_live_workers(queue: JobQueue, clock: FakeClock) -> None:
    submit(queue)
    submit(queue)
    queue.claim("w", lease_s=LEASE)
    queue.register_worker(WorkerInfo("w", "host", 1, "cpu", "sdapi-tiny"))
    stats = queue.stats()
    assert (stats.queued, stats.processing, stats.live_workers) == (1, 1, 1)
    assert stats.pending_work == pytest.approx(2 * work_units(make_request()))
    line = queue.position(2)
    assert line is not None and line.workers == 1
    clock.advance(60)
    assert queue.stats().live_workers == 0
    queue.worker_seen("w", "ready")
    assert queue.stats().live_workers == 1
    queue.remove_worker("w")
    assert queue.stats().live_workers == 0


def test_costs_are_learned_from_the_calls_workers_record(queue: JobQueue) -> None:
    key, model_key = batch_key(make_request()), "sdapi-tiny|text2img"
    assert queue.costs([key, model_key, ANY_KEY]) == {}
    calls = [Call(units, 20, 0.2 + 0.03 * 20 + 0.4 * units) for units in (0.1, 0.5, 2.0)]
    for call in calls:
        queue.record_call(key, model_key, call, cap=4, prior=PRIOR_CPU)
    learned = queue.costs([key, model_key, ANY_KEY, "never-seen"])
    assert set(learned) == {key, model_key, ANY_KEY}
    expected = fit(calls, PRIOR_CPU)
    assert learned[model_key].cost == pytest.approx(expected)
    assert learned[ANY_KEY].cost == pytest.approx(expected)
    assert learned[key].cost is None and learned[key].scale == pytest.approx(1.0, rel=0.05)
    assert (learned[key].cap, learned[model_key].cap) == (4, 1)


def test_only_the_latest_calls_are_kept(queue: JobQueue) -> None:
    key, model_key = batch_key(make_request()), "sdapi-tiny|text2img"
    for _ in range(OBSERVATIONS):
        queue.record_call(key, model_key, Call(1.0, 20, 100.0), cap=1, prior=PRIOR_CPU)
    for _ in range(OBSERVATIONS):  # the machine got 100x faster: the old calls are forgotten
        queue.record_call(key, model_key, Call(1.0, 20, 1.0), cap=1, prior=PRIOR_CPU)
    cost = queue.costs([model_key])[model_key].cost
    assert isinstance(cost, Cost) and cost.seconds(1.0, 20) == pytest.approx(1.0, rel=0.01)


def test_claim_only_takes_models_the_worker_serves(queue: JobQueue) -> None:
    other = submit(queue, model="other-model")
    mine = submit(queue)
    assert [j.id for j in queue.claim("w", lease_s=LEASE, models=["sdapi-tiny"])] == [mine]
    assert queue.claim("w", lease_s=LEASE, models=["sdapi-tiny"]) == []
    assert [j.id for j in queue.claim("w", lease_s=LEASE, models=["other-model"])] == [other]


def test_claim_can_gather_one_batch_key(queue: JobQueue) -> None:
    other = submit(queue, width=128)
    first = submit(queue)
    second = submit(queue, prompt="same key", seed=9)
    key = batch_key(make_request())
    claimed = queue.claim("w", lease_s=LEASE, images=5, batch_key=key)
    assert [j.id for j in claimed] == [first, second]
    assert queue.claim("w", lease_s=LEASE, batch_key=key) == []
    assert [j.id for j in queue.claim("w", lease_s=LEASE)] == [other]


def test_success_records_the_call_size_and_the_prompts_drawn(queue: JobQueue) -> None:
    job_id = submit(queue, steps=10)
    [job] = queue.claim("w", lease_s=LEASE)
    drawn = Rendered("a fox in english", "", language="de", translated=True)
    queue.complete(job_id, job.lease_id or "", generation_seconds=8.0, call_size=3, rendered=drawn)
    done = queue.get(job_id)
    assert done is not None and (done.generation_seconds, done.call_size) == (8.0, 3)
    assert done.rendered == drawn


def test_stats_group_pending_work_by_key_and_worker(queue: JobQueue) -> None:
    submit(queue)
    submit(queue, samples=2)
    submit(queue, width=128)
    queue.claim("w", lease_s=LEASE)
    model_key = "sdapi-tiny|text2img"
    groups = sorted(queue.stats().pending, key=lambda g: (g.batch_key, g.worker_id or ""))
    unit, wide = work_units(make_request()), work_units(make_request(width=128))
    assert [(g.batch_key, g.rate_key, g.worker_id, g.jobs, g.images) for g in groups] == [
        (batch_key(make_request(width=128)), model_key, None, 1, 1),
        (batch_key(make_request()), model_key, None, 1, 2),
        (batch_key(make_request()), model_key, "w", 1, 1),
    ]
    assert [g.units for g in groups] == pytest.approx([wide, 2 * unit, unit])


def test_a_cancelled_queued_job_never_runs(queue: JobQueue) -> None:
    job_id = submit(queue)
    cancelled = queue.cancel(job_id)
    assert cancelled is not None and cancelled.status is JobStatus.CANCELLED
    assert cancelled.finished_at is not None
    assert queue.claim("w", lease_s=LEASE) == []
    assert queue.cancel(job_id).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert queue.cancel(job_id + 100) is None


def test_a_running_job_is_stopped_by_its_worker(queue: JobQueue) -> None:
    job_id = submit(queue)
    [job] = queue.claim("w", lease_s=LEASE)
    lease = job.lease_id or ""
    assert queue.stop_cancelled(lease) == []
    flagged = queue.cancel(job_id)
    assert flagged is not None and flagged.status is JobStatus.PROCESSING
    assert flagged.cancel_requested
    assert queue.stop_cancelled(lease) == [job_id]
    assert queue.get(job_id).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert not queue.complete(job_id, lease, generation_seconds=1.0)
    assert queue.stop_cancelled(lease) == []


def test_a_finished_job_is_not_cancelled(queue: JobQueue) -> None:
    job_id = submit(queue)
    [job] = queue.claim("w", lease_s=LEASE)
    queue.complete(job_id, job.lease_id or "", generation_seconds=1.0)
    assert queue.cancel(job_id).status is JobStatus.SUCCESS  # type: ignore[union-attr]


def test_a_cancelled_job_whose_worker_died_stays_cancelled(
    queue: JobQueue, clock: FakeClock
) -> None:
    job_id = submit(queue)
    queue.claim("w", lease_s=LEASE)
    queue.cancel(job_id)
    clock.advance(LEASE + 1)
    assert queue.claim("w2", lease_s=LEASE) == []
    assert queue.get(job_id).status is JobStatus.CANCELLED  # type: ignore[union-attr]


def test_a_waiting_worker_wakes_as_soon_as_a_job_arrives(queue: JobQueue, twin: JobQueue) -> None:
    queue.wait_for_work(0)  # listening from now on
    waited: list[float] = []

    def wait() -> None:
        started = time.monotonic()
        queue.wait_for_work(WAKE_TIMEOUT)
        waited.append(time.monotonic() - started)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    submit(twin)  # from another handle: another process's, for the SQL backends
    thread.join()
    assert waited[0] < WAKE_TIMEOUT / 2, "woken by the new job, not by the timeout"


def test_changes_name_the_jobs_that_changed(queue: JobQueue, twin: JobQueue) -> None:
    queue.wait_for_changes(0)  # listening from now on
    job_id = submit(twin)
    [job] = twin.claim("w", lease_s=LEASE)
    twin.complete(job_id, job.lease_id or "", generation_seconds=1.0)
    deadline = time.monotonic() + WAKE_TIMEOUT
    seen: set[int] = set()
    while job_id not in seen and time.monotonic() < deadline:
        changed = queue.wait_for_changes(WAKE_TIMEOUT)
        if changed is None:  # a backend that cannot say which: anything may have changed
            break
        seen |= changed
    else:
        assert job_id in seen
    assert queue.wait_for_changes(0.05) in (frozenset(), None)  # nothing new since
