"""memory: the Outbox port (the webhook events that jobs ending wrote)."""

from __future__ import annotations

from dataclasses import replace

from sdapi.metrics import webhook_attempt
from sdapi.queue.base import (
    WebhookEvent,
    attempt_outcome,
)
from sdapi.queue.memory.common import MemoryState


class MemoryOutbox(MemoryState):
    def claim_webhooks(self, *, limit: int, lease_s: float) -> list[WebhookEvent]:
        now = self.clock()
        with self._lock:
            due = sorted(
                (o for o in self._outbox.values() if o.state == "pending"
                 and o.next_attempt_at <= now),
                key=lambda o: o.next_attempt_at,
            )[:limit]  # fmt: skip
            for row in due:
                row.next_attempt_at = now + lease_s
        return [row.event for row in due]

    def record_webhook(
        self, event_id: str, *, delivered: bool, error: str | None = None, retry_at: float | None
    ) -> None:
        with self._lock:
            row = self._outbox.get(event_id)
            if row is None or row.state != "pending":
                return
            row.event = replace(row.event, attempts=row.event.attempts + 1)
            row.last_error = error
            if delivered:
                row.state, status = "delivered", "delivered"
            elif retry_at is not None:
                row.state, status, row.next_attempt_at = "pending", "retrying", retry_at
            else:
                row.state, status = "failed", "failed"
            job = self._jobs[row.event.job_id]
            self._jobs[job.id] = job.evolve(webhook_status=status)
            self._metrics.add(webhook_attempt(attempt_outcome(delivered, retry_at)))
