"""The queue's delivery contract on every backend: the webhook outbox, deadlines, idempotent
track_ids and expiry."""

from __future__ import annotations

import threading

import pytest

from sdapi import metrics
from sdapi.jobs import JobStatus
from sdapi.queue.base import DEADLINE_ERROR, JobQueue, NewJob, QueueFull
from tests.helpers import FakeClock, make_request

LEASE = 30.0
HOOK = "https://example.com/hook"


def submit(queue: JobQueue, owner: str = "key_a", **fields: object) -> int:
    request = make_request()
    return queue.enqueue(NewJob(owner, request, ("generations/x0.png",), **fields)).id  # type: ignore[arg-type]


def run_to_success(queue: JobQueue, job_id: int) -> None:
    [job] = queue.claim("w1", lease_s=LEASE)
    assert job.id == job_id and job.lease_id
    assert queue.complete(job.id, job.lease_id, generation_seconds=1.0)


def test_a_webhook_job_starts_pending_and_one_without_has_no_status(queue: JobQueue) -> None:
    with_hook, without = submit(queue, webhook=HOOK), submit(queue)
    assert queue.get(with_hook).webhook_status == "pending"  # type: ignore[union-attr]
    assert queue.get(without).webhook_status == ""  # type: ignore[union-attr]


def test_each_final_state_writes_one_outbox_event(queue: JobQueue, clock: FakeClock) -> None:
    done = submit(queue, webhook=HOOK, track_id="t-done")
    run_to_success(queue, done)
    cancelled = submit(queue, webhook=HOOK)
    queue.cancel(cancelled)
    queue.cancel(cancelled)  # idempotent: still one event
    failing = submit(queue, webhook=HOOK)
    [job] = queue.claim("w1", lease_s=LEASE)
    assert queue.fail(failing, job.lease_id or "", error="boom")
    submit(queue)  # no webhook: no event
    events = queue.claim_webhooks(limit=10, lease_s=60)
    assert sorted((e.job_id, e.event, e.url) for e in events) == [
        (done, "success", HOOK),
        (cancelled, "cancelled", HOOK),
        (failing, "failed", HOOK),
    ]
    assert all(e.event_id.startswith("msg_") and e.attempts == 0 for e in events)


def test_a_claimed_event_is_not_handed_out_again_until_its_lease_ends(
    queue: JobQueue, clock: FakeClock
) -> None:
    run_to_success(queue, submit(queue, webhook=HOOK))
    [event] = queue.claim_webhooks(limit=10, lease_s=60)
    assert queue.claim_webhooks(limit=10, lease_s=60) == []
    clock.advance(61)  # the dispatcher died holding it: sent again, with the same id
    [again] = queue.claim_webhooks(limit=10, lease_s=60)
    assert again.event_id == event.event_id


def test_retries_keep_the_event_id_and_count_attempts(queue: JobQueue, clock: FakeClock) -> None:
    job_id = submit(queue, webhook=HOOK)
    run_to_success(queue, job_id)
    [event] = queue.claim_webhooks(limit=10, lease_s=60)
    queue.record_webhook(event.event_id, delivered=False, error="HTTP 500", retry_at=clock() + 5)
    assert queue.get(job_id).webhook_status == "retrying"  # type: ignore[union-attr]
    assert queue.claim_webhooks(limit=10, lease_s=60) == []  # not due yet
    clock.advance(5)
    [retry] = queue.claim_webhooks(limit=10, lease_s=60)
    assert (retry.event_id, retry.attempts) == (event.event_id, 1)
    queue.record_webhook(retry.event_id, delivered=True, retry_at=None)
    assert queue.get(job_id).webhook_status == "delivered"  # type: ignore[union-attr]
    clock.advance(3600)
    assert queue.claim_webhooks(limit=10, lease_s=60) == []


def test_giving_up_marks_the_job_failed_delivery(queue: JobQueue) -> None:
    job_id = submit(queue, webhook=HOOK)
    queue.cancel(job_id)
    [event] = queue.claim_webhooks(limit=10, lease_s=60)
    queue.record_webhook(event.event_id, delivered=False, error="refused", retry_at=None)
    assert queue.get(job_id).webhook_status == "failed"  # type: ignore[union-attr]
    queue.record_webhook(event.event_id, delivered=True, retry_at=None)  # too late: ignored
    assert queue.get(job_id).webhook_status == "failed"  # type: ignore[union-attr]


def test_jobs_ended_by_the_reaper_get_their_events(queue: JobQueue, clock: FakeClock) -> None:
    abandoned = submit(queue, webhook=HOOK)
    for _ in range(3):  # max_attempts=3: the third expired lease fails it
        assert queue.claim("w", lease_s=1)
        clock.advance(2)
    cancelled = submit(queue, webhook=HOOK)
    [job] = queue.claim("w", lease_s=1)
    assert job.id == cancelled
    queue.cancel(cancelled)  # flagged; its worker then dies
    clock.advance(2)
    assert queue.claim("w", lease_s=1) == []
    events = {e.job_id: e.event for e in queue.claim_webhooks(limit=10, lease_s=60)}
    assert events == {abandoned: "failed", cancelled: "cancelled"}


def test_a_job_queued_past_its_deadline_fails_instead_of_starting(
    queue: JobQueue, clock: FakeClock
) -> None:
    late = submit(queue, deadline_at=clock() + 10, webhook=HOOK)
    timely = submit(queue, deadline_at=clock() + 100)
    clock.advance(11)
    [job] = queue.claim("w1", lease_s=LEASE)
    assert job.id == timely
    failed = queue.get(late)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error == DEADLINE_ERROR and failed.started_at is None
    assert [e.job_id for e in queue.claim_webhooks(limit=10, lease_s=60)] == [late]


def test_a_repeated_track_id_returns_the_first_job(queue: JobQueue, clock: FakeClock) -> None:
    first = submit(queue, track_id="order-1", dedupe_since=clock() - 60)
    clock.advance(10)
    assert submit(queue, track_id="order-1", dedupe_since=clock() - 60) == first
    other_key = submit(queue, owner="key_b", track_id="order-1", dedupe_since=clock() - 60)
    assert other_key != first
    assert submit(queue, track_id="order-2", dedupe_since=clock() - 60) != first
    clock.advance(100)  # outside the window: a new job
    assert submit(queue, track_id="order-1", dedupe_since=clock() - 60) != first
    assert submit(queue, track_id="order-1") != first  # no window asked: never de-duplicated


def test_concurrent_repeats_of_a_track_id_make_one_job(queue: JobQueue, clock: FakeClock) -> None:
    ids: list[int] = []
    lock = threading.Lock()

    def repeat() -> None:
        job_id = submit(queue, track_id="same", dedupe_since=clock() - 60)
        with lock:
            ids.append(job_id)

    threads = [threading.Thread(target=repeat) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1


def test_expiry_by_age_and_by_keep_until(queue: JobQueue, clock: FakeClock) -> None:
    old = submit(queue)
    run_to_success(queue, old)
    clock.advance(100)
    temp = submit(queue, keep_until=clock() + 50)
    queue.cancel(temp)
    fresh = submit(queue)
    run_to_success(queue, fresh)
    running = submit(queue, keep_until=clock() - 1)
    assert queue.claim("w", lease_s=LEASE)[0].id == running  # not ended: never expirable
    assert [j.id for j in queue.expirable(finished_before=clock() - 50, limit=10)] == [old]
    assert queue.expirable(finished_before=None, limit=10) == []
    clock.advance(51)
    due = queue.expirable(finished_before=None, limit=10)
    assert [j.id for j in due] == [temp]
    queue.expire([old, temp, running])
    assert [queue.get(i).status for i in (old, temp, fresh, running)] == [  # type: ignore[union-attr]
        JobStatus.EXPIRED,
        JobStatus.EXPIRED,
        JobStatus.SUCCESS,
        JobStatus.PROCESSING,
    ]
    assert queue.expirable(finished_before=clock(), limit=10) == [queue.get(fresh)]


def test_running_lists_the_jobs_being_generated(queue: JobQueue) -> None:
    a, b, queued = submit(queue), submit(queue), submit(queue)
    queue.claim("w1", lease_s=LEASE, images=2)
    assert [j.id for j in queue.running(limit=10)] == [a, b]
    assert [j.id for j in queue.running(limit=1)] == [a]
    assert queued not in [j.id for j in queue.running(limit=10)]


def test_recent_lists_one_owners_jobs_newest_first(queue: JobQueue) -> None:
    mine = [submit(queue) for _ in range(3)]
    submit(queue, owner="key_b")
    assert [j.id for j in queue.recent("key_a", limit=10)] == mine[::-1]
    assert [j.id for j in queue.recent("key_a", limit=2)] == mine[:0:-1]
    assert queue.recent("nobody", limit=10) == []


def test_caps_on_live_jobs_refuse_without_enqueueing(queue: JobQueue) -> None:
    for _ in range(2):
        submit(queue, owner_cap=2)
    with pytest.raises(QueueFull) as caught:
        submit(queue, owner_cap=2)
    assert (caught.value.scope, caught.value.limit) == ("key", 2)
    assert submit(queue, owner="key_b", owner_cap=2)  # another key has its own count
    with pytest.raises(QueueFull) as caught:
        submit(queue, owner="key_c", queue_cap=3)
    assert caught.value.scope == "server"
    [job] = queue.claim("w", lease_s=LEASE)  # running still counts; ended does not
    with pytest.raises(QueueFull):
        submit(queue, owner_cap=2)
    queue.complete(job.id, job.lease_id or "", generation_seconds=1)
    assert submit(queue, owner_cap=2)
    assert queue.stats().queued == 3


def test_concurrent_submissions_never_pass_the_owners_cap(queue: JobQueue) -> None:
    accepted: list[int] = []
    lock = threading.Lock()

    def try_submit() -> None:
        try:
            job_id = submit(queue, owner_cap=3)
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
    kept, cancelled = submit(queue, webhook=HOOK), submit(queue, webhook=HOOK)
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


def test_metrics_count_each_end_once_in_its_own_transaction(queue: JobQueue) -> None:
    done = submit(queue, webhook=HOOK)
    run_to_success(queue, done)
    cancelled = submit(queue)
    queue.cancel(cancelled)
    queue.cancel(cancelled)  # no second end, no second count
    [event] = queue.claim_webhooks(limit=1, lease_s=60)
    queue.record_webhook(event.event_id, delivered=False, error="500", retry_at=None)
    queue.record_metrics(metrics.batch(3))
    got = {(name, labels): value for name, labels, value in queue.metrics()}
    assert got[("sdapi_jobs_finished_total", 'status="success"')] == 1
    assert got[("sdapi_jobs_finished_total", 'status="cancelled"')] == 1
    size = 'model="sdapi-tiny",size="64x64"'
    assert got[("sdapi_generation_seconds_count", size)] == 1
    assert got[("sdapi_generation_seconds_sum", size)] == 1.0
    assert got[("sdapi_generation_seconds_bucket", size + ',le="1"')] == 1
    assert got[("sdapi_generation_seconds_bucket", size + ',le="0.5"')] == 0
    assert got[("sdapi_webhook_deliveries_total", 'outcome="failed"')] == 1
    assert got[("sdapi_batch_images_sum", "")] == 3


def test_forget_deletes_only_old_expired_jobs_and_ids_never_come_back(
    queue: JobQueue, clock: FakeClock
) -> None:
    old = submit(queue, webhook=HOOK)
    run_to_success(queue, old)
    clock.advance(100)
    young = submit(queue)
    run_to_success(queue, young)
    kept = submit(queue)
    run_to_success(queue, kept)  # ended but not expired: never forgotten
    queue.expire([old, young])
    assert queue.forget(finished_before=clock() - 50, limit=10) == 1
    assert queue.get(old) is None and queue.get(young) is not None and queue.get(kept)
    assert queue.claim_webhooks(limit=10, lease_s=60) == []  # its event went with it
    assert submit(queue) > kept
