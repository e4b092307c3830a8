"""Delivering webhooks from the outbox: signed, retried with backoff, never in a worker's way.

Workers only write an outbox row in the transaction that ends a job (see sdapi.queue.base); the
API process runs this dispatcher, which leases due rows, POSTs each from a small thread pool and
records the outcome. So a slow or dead receiver holds up one sending thread, never a generation,
and a crash anywhere leaves the row to be sent again, with the same `webhook-id`.

Delivery is at least once: a dispatcher that dies after the receiver got the POST but before the
outcome was recorded sends it again when its lease ends. Receivers dedupe on `webhook-id`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sdapi.background import Loop
from sdapi.errors import ImageFetchFailed, UnsafeUrl
from sdapi.jobs import Job
from sdapi.logs import job_context
from sdapi.queue.base import JobQueue, WebhookEvent
from sdapi.safeurl import UrlPolicy, fetch
from sdapi.webhooks.signing import signature_headers

log = logging.getLogger(__name__)

#: A receiver has this long to answer (the spec's 30 s), redirects not followed.
SEND_TIMEOUT_S = 30.0
#: The most a retry waits, however many attempts failed before.
MAX_RETRY_DELAY_S = 3600.0
#: A leased event comes back to the outbox after this (a send takes SEND_TIMEOUT_S at most).
CLAIM_LEASE_S = SEND_TIMEOUT_S * 3
#: How often an idle dispatcher looks for due events.
POLL_S = 0.5

Render = Callable[[Job], Mapping[str, Any]]
Send = Callable[..., object]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: `first_s` after the first failure, x4 each time (at most an hour
    apart, with 10% jitter so a receiver coming back is not hit by every retry at once), for
    `give_up_after_s` counted from when the job ended."""

    first_s: float = 5.0
    give_up_after_s: float = 24 * 3600.0

    def delay(self, failures: int) -> float:
        base = min(self.first_s * 4 ** max(failures - 1, 0), MAX_RETRY_DELAY_S)
        return float(base * random.uniform(0.9, 1.1))

    def next_attempt(self, event: WebhookEvent, now: float) -> float | None:
        """When to try again after this attempt failed; None once the window is spent."""
        at = now + self.delay(event.attempts + 1)
        return at if at <= event.created_at + self.give_up_after_s else None


def json_body(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def webhook_policy(allow: tuple[str, ...], timeout_s: float = SEND_TIMEOUT_S) -> UrlPolicy:
    """The SSRF rules of image fetching, with the webhook's own budget and no redirects (a
    redirect would turn the POST into a GET, and is not where the owner asked it sent)."""
    return UrlPolicy(allow=allow, max_bytes=64 * 1024, timeout_s=timeout_s, max_redirects=0)


class WebhookDispatcher:
    def __init__(
        self,
        queue: JobQueue,
        render: Render,
        secret: str,
        policy: UrlPolicy,
        *,
        retry: RetryPolicy | None = None,
        senders: int = 4,
        clock: Callable[[], float] = time.time,
        send: Send = fetch,
    ) -> None:
        self.queue = queue
        self.render = render
        self.secret = secret
        self.policy = policy
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self._send = send
        self._free = threading.Semaphore(senders)
        self._pool = ThreadPoolExecutor(senders, thread_name_prefix="webhook")
        self._loop = Loop("webhook-dispatcher", self.dispatch_due, POLL_S)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        """Stop claiming; sends in flight finish (each within SEND_TIMEOUT_S)."""
        self._loop.stop()
        self._pool.shutdown(wait=True)

    def dispatch_due(self) -> int:
        """Lease as many due events as there are free senders and start sending them."""
        free = 0
        while self._free.acquire(blocking=False):
            free += 1
        events = self.queue.claim_webhooks(limit=free, lease_s=CLAIM_LEASE_S) if free else []
        for _ in range(free - len(events)):
            self._free.release()
        for event in events:
            self._pool.submit(self._deliver_and_release, event)
        return len(events)

    def _deliver_and_release(self, event: WebhookEvent) -> None:
        try:
            self.deliver(event)
        except Exception:  # recorded nothing: the lease brings the event back
            log.exception("webhook %s for job %s: delivery crashed", event.event_id, event.job_id)
        finally:
            self._free.release()

    def deliver(self, event: WebhookEvent) -> None:
        """One attempt: POST the signed body, then record delivered, retry or give up."""
        with job_context([event.job_id]):
            self._attempt(event)

    def _attempt(self, event: WebhookEvent) -> None:
        job = self.queue.get(event.job_id)
        if job is None:
            self.queue.record_webhook(
                event.event_id, delivered=False, error="job gone", retry_at=None
            )
            return
        body = json_body(self.render(job))
        error = self._post(event, body)
        if error is None:
            log.info("webhook %s for job %s delivered", event.event_id, job.id)
            self.queue.record_webhook(event.event_id, delivered=True, retry_at=None)
            return
        retry_at = None if error.permanent else self.retry.next_attempt(event, self.clock())
        log.warning(
            "webhook %s for job %s: %s (%s)",
            event.event_id,
            job.id,
            error.text,
            "giving up" if retry_at is None else f"retry in {retry_at - self.clock():.0f} s",
        )
        self.queue.record_webhook(
            event.event_id, delivered=False, error=error.text, retry_at=retry_at
        )

    def _post(self, event: WebhookEvent, body: bytes) -> _Failure | None:
        message = SignedPost(event.url, event.event_id, body, int(self.clock()))
        return message.send(self._send, self.policy, self.secret)


@dataclass(frozen=True, slots=True)
class SignedPost:
    """One webhook POST: JSON body, Standard Webhooks headers, through the SSRF-safe fetcher."""

    url: str
    event_id: str
    body: bytes
    timestamp: int

    def send(self, send: Send, policy: UrlPolicy, secret: str) -> _Failure | None:
        """None when the receiver answered 2xx, else why not."""
        headers = {
            "content-type": "application/json",
            **signature_headers(secret, self.event_id, self.body, timestamp=self.timestamp),
        }
        try:
            send(self.url, policy, method="POST", body=self.body, headers=headers)
        except UnsafeUrl as exc:  # the address is refused: retrying cannot help
            return _Failure(exc.detail or str(exc), permanent=True)
        except ImageFetchFailed as exc:  # down, slow, non-2xx: worth another try
            return _Failure(exc.detail or str(exc), permanent=False)
        return None


@dataclass(frozen=True, slots=True)
class _Failure:
    text: str
    permanent: bool
