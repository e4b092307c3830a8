"""The Jobs port on every backend: submitting, claiming, leases, ending, cancelling, where jobs
stand, waking waiters, caps and repeated track_ids."""

from __future__ import annotations

import threading
import time

import pytest

from sdapi.catalog.work import batch_key, work_units
from sdapi.jobs import Echo, JobStatus, Pending, Rendered
from sdapi.queue.base import DEADLINE_ERROR, JobQueue, QueueFull
from tests.contract.common import (
    HOOK,
    LEASE,
    WAKE_TIMEOUT,
    submit,
    submit_job,
)
from tests.helpers import FakeClock, make_request


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


def test_a_job_queued_past_its_deadline_fails_instead_of_starting(
    queue: JobQueue, clock: FakeClock
) -> None:
    late = submit_job(queue, deadline_at=clock() + 10, webhook=HOOK)
    timely = submit_job(queue, deadline_at=clock() + 100)
    clock.advance(11)
    [job] = queue.claim("w1", lease_s=LEASE)
    assert job.id == timely
    failed = queue.get(late)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error == DEADLINE_ERROR and failed.started_at is None
    assert [e.job_id for e in queue.claim_webhooks(limit=10, lease_s=60)] == [late]


def test_a_repeated_track_id_returns_the_first_job(queue: JobQueue, clock: FakeClock) -> None:
    first = submit_job(queue, track_id="order-1", dedupe_since=clock() - 60)
    clock.advance(10)
    assert submit_job(queue, track_id="order-1", dedupe_since=clock() - 60) == first
    other_key = submit_job(queue, owner="key_b", track_id="order-1", dedupe_since=clock() - 60)
    assert other_key != first
    assert submit_job(queue, track_id="order-2", dedupe_since=clock() - 60) != first
    clock.advance(100)  # outside the window: a new job
    assert submit_job(queue, track_id="order-1", dedupe_since=clock() - 60) != first
    assert submit_job(queue, track_id="order-1") != first  # no window asked: never de-duplicated


def test_concurrent_repeats_of_a_track_id_make_one_job(queue: JobQueue, clock: FakeClock) -> None:
    ids: list[int] = []
    lock = threading.Lock()

    def repeat() -> None:
        job_id = submit_job(queue, track_id="same", dedupe_since=clock() - 60)
        with lock:
            ids.append(job_id)

    threads = [threading.Thread(target=repeat) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1


def test_running_lists_the_jobs_being_generated(queue: JobQueue) -> None:
    a, b, queued = submit_job(queue), submit_job(queue), submit_job(queue)
    queue.claim("w1", lease_s=LEASE, images=2)
    assert [j.id for j in queue.running(limit=10)] == [a, b]
    assert [j.id for j in queue.running(limit=1)] == [a]
    assert queued not in [j.id for j in queue.running(limit=10)]


def test_recent_lists_one_owners_jobs_newest_first(queue: JobQueue) -> None:
    mine = [submit_job(queue) for _ in range(3)]
    submit_job(queue, owner="key_b")
    assert [j.id for j in queue.recent("key_a", limit=10)] == mine[::-1]
    assert [j.id for j in queue.recent("key_a", limit=2)] == mine[:0:-1]
    assert queue.recent("nobody", limit=10) == []


def test_caps_on_live_jobs_refuse_without_enqueueing(queue: JobQueue) -> None:
    for _ in range(2):
        submit_job(queue, owner_cap=2)
    with pytest.raises(QueueFull) as caught:
        submit_job(queue, owner_cap=2)
    assert (caught.value.scope, caught.value.limit) == ("key", 2)
    assert submit_job(queue, owner="key_b", owner_cap=2)  # another key has its own count
    with pytest.raises(QueueFull) as caught:
        submit_job(queue, owner="key_c", queue_cap=3)
    assert caught.value.scope == "server"
    [job] = queue.claim("w", lease_s=LEASE)  # running still counts; ended does not
    with pytest.raises(QueueFull):
        submit_job(queue, owner_cap=2)
    queue.complete(job.id, job.lease_id or "", generation_seconds=1)
    assert submit_job(queue, owner_cap=2)
    assert queue.stats().queued == 3


def test_concurrent_submissions_never_pass_the_owners_cap(queue: JobQueue) -> None:
    accepted: list[int] = []
    lock = threading.Lock()

    def try_submit() -> None:
        try:
            job_id = submit_job(queue, owner_cap=3)
        except QueueFull:
            return
        with lock:
            accepted.append(job_id)

    threads = [threading.Thread(target=try_submit) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 3


def test_a_released_lease_puts_its_jobs_back_without_counting_the_attempt(
    queue: JobQueue,
) -> None:
    kept, cancelled = submit_job(queue, webhook=HOOK), submit_job(queue, webhook=HOOK)
    claimed = queue.claim("w1", lease_s=LEASE, images=2)
    lease = claimed[0].lease_id or ""
    queue.cancel(cancelled)
    assert queue.release(lease) == [kept]
    job = queue.get(kept)
    assert job is not None and job.status is JobStatus.QUEUED and job.attempts == 0
    assert job.lease_id is None and job.started_at is None
    assert queue.get(cancelled).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert queue.heartbeat(lease, lease_s=LEASE) == 0  # the lease holds nothing any more
    assert not queue.complete(kept, lease, generation_seconds=1)
    assert [j.id for j in queue.claim("w2", lease_s=LEASE)] == [kept]
