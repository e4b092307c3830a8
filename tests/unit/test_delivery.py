"""Webhook dispatching, retention sweeps and output names, on memory backends."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sdapi.api.submissions import output_names
from sdapi.errors import ImageFetchFailed, UnsafeUrl
from sdapi.jobs import JobStatus
from sdapi.queue.base import NewJob, WebhookEvent
from sdapi.queue.memory import MemoryQueue
from sdapi.retention import RetentionSweeper
from sdapi.safeurl import UrlPolicy
from sdapi.settings import Settings, parse_duration
from sdapi.storage.base import content_type, is_valid_name, temp_expiry
from sdapi.storage.memory import MemoryStore
from sdapi.webhooks import generate_secret, verify
from sdapi.webhooks.dispatcher import RetryPolicy, WebhookDispatcher, webhook_policy
from sdapi.webhooks.progress import ProgressNotifier
from tests.helpers import FakeClock, make_request

HOOK = "https://receiver.example/hook"


class FakeSend:
    """Stands in for safeurl.fetch: records each POST, fails the next `failures` ones."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, url: str, policy: UrlPolicy, **kw: Any) -> None:
        self.calls.append({"url": url, **kw})
        if self.failures:
            raise self.failures.pop(0)


def ended_job(queue: MemoryQueue, **fields: Any) -> int:
    job = queue.enqueue(NewJob("k", make_request(), ("generations/a-0.png",), **fields))
    queue.cancel(job.id)
    return job.id


def dispatcher(queue: MemoryQueue, send: FakeSend, clock: FakeClock, secret: str) -> Any:
    render = lambda job: {"status": str(job.status), "id": job.id}  # noqa: E731
    policy = webhook_policy(())
    # 90 s: the third retry would come 22.5 + 72 s at the earliest (jitter), always past it.
    retry = RetryPolicy(first_s=5, give_up_after_s=90)
    return WebhookDispatcher(queue, render, secret, policy, retry=retry, clock=clock, send=send)


def test_a_delivery_is_a_signed_post_of_the_rendered_job(clock: FakeClock) -> None:
    queue, send, secret = MemoryQueue(clock=clock), FakeSend(), generate_secret()
    job_id = ended_job(queue, webhook=HOOK)
    [event] = queue.claim_webhooks(limit=1, lease_s=60)
    dispatcher(queue, send, clock, secret).deliver(event)
    [call] = send.calls
    assert call["url"] == HOOK and call["method"] == "POST"
    assert call["headers"]["webhook-id"] == event.event_id
    assert verify(call["body"], call["headers"], secret, now=clock()) == {
        "status": "cancelled",
        "id": job_id,
    }
    assert queue.get(job_id).webhook_status == "delivered"  # type: ignore[union-attr]


def test_transient_failures_are_retried_until_the_window_ends(clock: FakeClock) -> None:
    queue = MemoryQueue(clock=clock)
    send = FakeSend(*[ImageFetchFailed(detail="HTTP 503") for _ in range(10)])
    d = dispatcher(queue, send, clock, generate_secret())
    job_id = ended_job(queue, webhook=HOOK)
    attempts_at = []
    while queue.get(job_id).webhook_status != "failed":  # type: ignore[union-attr]
        if events := queue.claim_webhooks(limit=1, lease_s=60):
            attempts_at.append(clock())
            d.deliver(events[0])
        clock.advance(0.5)
    # At 0, ~5 and ~25 s; the next would be ~80 s later, past the 90 s window: given up.
    _, second, third = (t - attempts_at[0] for t in attempts_at)
    assert 4.5 <= second <= 6 and 22 <= third <= 28.5
    assert len({c["headers"]["webhook-id"] for c in send.calls}) == 1


def test_a_refused_address_is_not_retried(clock: FakeClock) -> None:
    queue = MemoryQueue(clock=clock)
    send = FakeSend(UnsafeUrl(detail="address 10.0.0.1 is private; not allowed"))
    job_id = ended_job(queue, webhook=HOOK)
    [event] = queue.claim_webhooks(limit=1, lease_s=60)
    dispatcher(queue, send, clock, generate_secret()).deliver(event)
    assert queue.get(job_id).webhook_status == "failed"  # type: ignore[union-attr]
    clock.advance(3600)
    assert queue.claim_webhooks(limit=1, lease_s=60) == []


def test_dispatch_hands_out_no_more_events_than_free_senders(clock: FakeClock) -> None:
    queue = MemoryQueue(clock=clock)
    for _ in range(6):
        ended_job(queue, webhook=HOOK)
    d = dispatcher(queue, FakeSend(), clock, generate_secret())
    d._free.acquire()  # three of the four senders are busy
    d._free.acquire()
    d._free.acquire()
    assert d.dispatch_due() == 1
    d.stop()


def test_retry_delays_grow_fourfold_with_jitter_and_are_capped() -> None:
    retry = RetryPolicy(first_s=5, give_up_after_s=10**9)
    for failures, base in ((1, 5), (2, 20), (3, 80), (20, 3600)):
        assert base * 0.9 <= retry.delay(failures) <= base * 1.1
    event = WebhookEvent("msg_x", 1, "success", HOOK, attempts=0, created_at=0.0)
    assert retry.next_attempt(event, now=10**9) is None  # past the window: give up


def test_the_sweeper_removes_files_first_then_expires(clock: FakeClock) -> None:
    queue, images = MemoryQueue(clock=clock), MemoryStore()
    request = make_request(init_image="inputs/p-init.png")
    job = queue.enqueue(NewJob("k", request, ("generations/p-0.png",)))
    for name in ("inputs/p-init.png", "generations/p-0.png", "generations/keep-0.png"):
        images.put(name, b"x")
    [claimed] = queue.claim("w", lease_s=30)
    queue.complete(claimed.id, claimed.lease_id or "", generation_seconds=1)
    sweeper = RetentionSweeper(queue, images, retention_s=60, clock=clock)
    assert sweeper.sweep() == 0
    clock.advance(61)
    assert sweeper.sweep() == 1
    assert queue.get(job.id).status is JobStatus.EXPIRED  # type: ignore[union-attr]
    assert set(images.files) == {"generations/keep-0.png"}
    assert sweeper.sweep() == 0


def test_output_names_say_their_form_and_end() -> None:
    assert output_names("p", 2, False, None) == ("generations/p-0.png", "generations/p-1.png")
    assert output_names("p", 1, True, None) == ("generations/p-0.base64",)
    [temp] = output_names("p", 1, False, 1234.9)
    assert temp == "temp/1234-p-0.png" and is_valid_name(temp)
    assert temp_expiry(temp) == 1234 and temp_expiry("generations/p-0.png") is None
    assert content_type("generations/p-0.base64").startswith("text/plain")
    assert not is_valid_name("temp/../x.png") and not is_valid_name("other/p.png")


def test_durations_read_as_seconds() -> None:
    assert [parse_duration(t) for t in ("90", "30s", "15m", "12h", "7d", "1.5h")] == [
        90,
        30,
        900,
        43200,
        604800,
        5400,
    ]
    assert Settings(retention="2d").retention == 172800
    with pytest.raises(ValueError, match="not a duration"):
        Settings(retention="forever")


def test_progress_events_are_throttled_signed_and_only_for_jobs_that_asked(
    clock: FakeClock,
) -> None:
    queue, send, secret = MemoryQueue(clock=clock), FakeSend(), generate_secret()
    asked = queue.enqueue(
        NewJob("k", make_request(), ("generations/a-0.png",), webhook=HOOK, track_id="t",
               webhook_progress=True)
    )  # fmt: skip
    queue.enqueue(NewJob("k", make_request(), ("generations/b-0.png",), webhook=HOOK))
    [job, _] = queue.claim("w", lease_s=30, images=2)
    notifier = ProgressNotifier(queue, secret, (), clock=clock, send=send)

    def step_at(progress: float) -> None:
        queue.heartbeat(job.lease_id or "", lease_s=30, progress=progress)
        notifier.step()
        deadline = time.monotonic() + 2
        while notifier._busy and time.monotonic() < deadline:  # the POST runs in a thread
            time.sleep(0.01)

    for progress in (0.05, 0.1, 0.3):
        step_at(progress)
    sent = [verify(c["body"], c["headers"], secret, now=clock()) for c in send.calls]
    assert sent == [
        {"status": "processing", "id": asked.id, "progress": p, "track_id": "t"}
        for p in (0.05, 0.3)  # 0.1 was too small a step after 0.05
    ]
    assert len({c["headers"]["webhook-id"] for c in send.calls}) == 2


def test_the_sweeper_forgets_expired_jobs_after_the_history_window(clock: FakeClock) -> None:
    queue, images = MemoryQueue(clock=clock), MemoryStore()
    job = queue.enqueue(NewJob("k", make_request(), ("generations/p-0.png",)))
    queue.cancel(job.id)
    sweeper = RetentionSweeper(queue, images, retention_s=10, forget_after_s=100, clock=clock)
    clock.advance(11)
    assert sweeper.sweep() == 1 and queue.get(job.id).status is JobStatus.EXPIRED  # type: ignore[union-attr]
    clock.advance(90)
    assert sweeper.sweep() == 1 and queue.get(job.id) is None
