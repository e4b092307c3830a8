"""PostgreSQL: the Outbox port (the webhook events that jobs ending wrote)."""

from __future__ import annotations

from sdapi.metrics import webhook_attempt
from sdapi.queue.base import (
    WebhookEvent,
    attempt_outcome,
)
from sdapi.queue.postgres.common import PostgresBase, bump
from sdapi.queue.rows import (
    DUE_WEBHOOKS,
    JOB_WEBHOOK_STATUS,
    RECORD_WEBHOOK,
    webhook_record_args,
)


class PostgresOutbox(PostgresBase):
    def claim_webhooks(self, *, limit: int, lease_s: float) -> list[WebhookEvent]:
        now = self.clock()
        with self.db.transaction() as conn:
            # SKIP LOCKED: API replicas dispatching side by side never take the same event.
            rows = conn.execute(
                DUE_WEBHOOKS.format(p="%s") + " FOR UPDATE SKIP LOCKED", (now, limit)
            ).fetchall()
            events = [WebhookEvent(**row) for row in rows]
            if events:
                conn.execute(
                    "UPDATE webhook_events SET next_attempt_at = %s WHERE event_id = ANY(%s)",
                    (now + lease_s, [e.event_id for e in events]),
                )
        return events

    def record_webhook(
        self, event_id: str, *, delivered: bool, error: str | None = None, retry_at: float | None
    ) -> None:
        event, job = webhook_record_args(event_id, delivered, error, retry_at, self.clock())
        with self.db.transaction() as conn:
            if conn.execute(RECORD_WEBHOOK.format(p="%s"), event).rowcount:
                conn.execute(JOB_WEBHOOK_STATUS.format(p="%s"), job)
                bump(conn, webhook_attempt(attempt_outcome(delivered, retry_at)))
