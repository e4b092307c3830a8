"""The Outbox port on every backend: one event per final state of a job with a webhook, written
with it, leased to one dispatcher, retried with the same event id."""

from __future__ import annotations

from sdapi.queue.base import JobQueue
from tests.contract.common import (
    HOOK,
    LEASE,
    run_to_success,
    submit_job,
)
from tests.helpers import FakeClock


def test_a_webhook_job_starts_pending_and_one_without_has_no_status(queue: JobQueue) -> None:
    with_hook, without = submit_job(queue, webhook=HOOK), submit_job(queue)
    assert queue.get(with_hook).webhook_status == "pending"  # type: ignore[union-attr]
    assert queue.get(without).webhook_status == ""  # type: ignore[union-attr]


def test_each_final_state_writes_one_outbox_event(queue: JobQueue, clock: FakeClock) -> None:
    done = submit_job(queue, webhook=HOOK, track_id="t-done")
    run_to_success(queue, done)
    cancelled = submit_job(queue, webhook=HOOK)
    queue.cancel(cancelled)
    queue.cancel(cancelled)  # idempotent: still one event
    failing = submit_job(queue, webhook=HOOK)
    [job] = queue.claim("w1", lease_s=LEASE)
    assert queue.fail(failing, job.lease_id or "", error="boom")
    submit_job(queue)  # no webhook: no event
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
    run_to_success(queue, submit_job(queue, webhook=HOOK))
    [event] = queue.claim_webhooks(limit=10, lease_s=60)
    assert queue.claim_webhooks(limit=10, lease_s=60) == []
    clock.advance(61)  # the dispatcher died holding it: sent again, with the same id
    [again] = queue.claim_webhooks(limit=10, lease_s=60)
    assert again.event_id == event.event_id


def test_retries_keep_the_event_id_and_count_attempts(queue: JobQueue, clock: FakeClock) -> None:
    job_id = submit_job(queue, webhook=HOOK)
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
    job_id = submit_job(queue, webhook=HOOK)
    queue.cancel(job_id)
    [event] = queue.claim_webhooks(limit=10, lease_s=60)
    queue.record_webhook(event.event_id, delivered=False, error="refused", retry_at=None)
    assert queue.get(job_id).webhook_status == "failed"  # type: ignore[union-attr]
    queue.record_webhook(event.event_id, delivered=True, retry_at=None)  # too late: ignored
    assert queue.get(job_id).webhook_status == "failed"  # type: ignore[union-attr]


def test_jobs_ended_by_the_reaper_get_their_events(queue: JobQueue, clock: FakeClock) -> None:
    abandoned = submit_job(queue, webhook=HOOK)
    for _ in range(3):  # max_attempts=3: the third expired lease fails it
        assert queue.claim("w", lease_s=1)
        clock.advance(2)
    cancelled = submit_job(queue, webhook=HOOK)
    [job] = queue.claim("w", lease_s=1)
    assert job.id == cancelled
    queue.cancel(cancelled)  # flagged; its worker then dies
    clock.advance(2)
    assert queue.claim("w", lease_s=1) == []
    events = {e.job_id: e.event for e in queue.claim_webhooks(limit=10, lease_s=60)}
    assert events == {abandoned: "failed", cancelled: "cancelled"}
