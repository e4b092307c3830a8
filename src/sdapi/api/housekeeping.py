"""What an API process runs beside serving requests: webhook delivery and retention.

Every API replica runs both; they share the work through the database (events and expiries are
claimed or idempotent), so one replica or ten deliver each webhook and expire each job alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sdapi.api.v3 import translate
from sdapi.backends import Backends
from sdapi.jobs import Job
from sdapi.retention import RetentionSweeper
from sdapi.settings import Settings
from sdapi.webhooks.dispatcher import RetryPolicy, WebhookDispatcher, webhook_policy
from sdapi.webhooks.progress import ProgressNotifier
from sdapi.webhooks.secret import server_secret


def webhook_renderer(settings: Settings, backends: Backends) -> Callable[[Job], Mapping[str, Any]]:
    """A job's webhook body, with links on the base URL its client submitted to."""
    fallback = settings.public_url or f"http://{settings.host}:{settings.port}"

    def render(job: Job) -> Mapping[str, Any]:
        base_url = settings.public_url or job.base_url or fallback
        return translate.webhook_body(job, translate.Links(base_url, backends.images))

    return render


def start_housekeeping(settings: Settings, backends: Backends) -> Callable[[], None]:
    """Start the dispatcher, the progress notifier and the sweeper; returns what stops them."""
    secret = server_secret(settings)
    dispatcher = WebhookDispatcher(
        backends.queue,
        webhook_renderer(settings, backends),
        secret,
        webhook_policy(settings.allow_hosts),
        retry=RetryPolicy(settings.webhook_retry, settings.webhook_retry_window),
    )
    progress = ProgressNotifier(backends.queue, secret, settings.allow_hosts)
    sweeper = RetentionSweeper(
        backends.queue,
        backends.images,
        retention_s=settings.retention,
        temp_ttl_s=settings.temp_ttl,
        forget_after_s=settings.forget_after,
    )
    services = (dispatcher, progress, sweeper)
    for service in services:
        service.start()

    def stop() -> None:
        for service in services:
            service.stop()

    return stop
