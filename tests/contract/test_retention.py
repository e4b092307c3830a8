"""The Retention port on every backend: ended jobs due for removal, and forgetting them."""

from __future__ import annotations

from sdapi.jobs import JobStatus
from sdapi.queue.base import JobQueue
from tests.contract.common import (
    HOOK,
    LEASE,
    run_to_success,
    submit_job,
)
from tests.helpers import FakeClock


def test_expiry_by_age_and_by_keep_until(queue: JobQueue, clock: FakeClock) -> None:
    old = submit_job(queue)
    run_to_success(queue, old)
    clock.advance(100)
    temp = submit_job(queue, keep_until=clock() + 50)
    queue.cancel(temp)
    fresh = submit_job(queue)
    run_to_success(queue, fresh)
    running = submit_job(queue, keep_until=clock() - 1)
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


def test_forget_deletes_only_old_expired_jobs_and_ids_never_come_back(
    queue: JobQueue, clock: FakeClock
) -> None:
    old = submit_job(queue, webhook=HOOK)
    run_to_success(queue, old)
    clock.advance(100)
    young = submit_job(queue)
    run_to_success(queue, young)
    kept = submit_job(queue)
    run_to_success(queue, kept)  # ended but not expired: never forgotten
    queue.expire([old, young])
    assert queue.forget(finished_before=clock() - 50, limit=10) == 1
    assert queue.get(old) is None and queue.get(young) is not None and queue.get(kept)
    assert queue.claim_webhooks(limit=10, lease_s=60) == []  # its event went with it
    assert submit_job(queue) > kept
