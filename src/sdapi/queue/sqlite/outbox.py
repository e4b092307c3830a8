"""SQLite: the Outbox port (the webhook events that jobs ending wrote)."""

from __future__ import annotations

from sdapi.metrics import webhook_attempt
from sdapi.queue.base import (
    WebhookEvent,
    attempt_outcome,
)
from sdapi.queue.rows import (
    DUE_WEBHOOKS,
    JOB_WEBHOOK_STATUS,
    RECORD_WEBHOOK,
    webhook_record_args,
)
from sdapi.queue.sqlite.common import SQLiteBase, bump


class SQLiteOutbox(SQLiteBase):
    def claim_webhooks(self, *, limit: int, lease_s: float) -> list[WebhookEvent]:
        now = self.clock()
        conn = self.db.connection()
        if conn.execute(DUE_WEBHOOKS.format(p="?"), (now, 1)).fetchone() is None:
            return []  # nothing due: stay a read, as idle claims do
        with self.db.write() as conn:
            rows = conn.execute(DUE_WEBHOOKS.format(p="?"), (now, limit)).fetchall()
            events = [WebhookEvent(*row) for row in rows]
            for event in events:
                conn.execute(
                    "UPDATE webhook_events SET next_attempt_at = ? WHERE event_id = ?",
                    (now + lease_s, event.event_id),
                )
        return events

    def record_webhook(
        self, event_id: str, *, delivered: bool, error: str | None = None, retry_at: float | None
    ) -> None:
        event, job = webhook_record_args(event_id, delivered, error, retry_at, self.clock())
        with self.db.write() as conn:
            if conn.execute(RECORD_WEBHOOK.format(p="?"), event).rowcount:
                conn.execute(JOB_WEBHOOK_STATUS.format(p="?"), job)
                bump(conn, webhook_attempt(attempt_outcome(delivered, retry_at)))
