"""The app factory: `create_app(settings)` builds a fresh app; nothing is built at import."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sdapi import __version__
from sdapi.api import errors, files, health, observability, openapi, web
from sdapi.api.housekeeping import start_housekeeping
from sdapi.api.observability import HttpTiming
from sdapi.api.state import AppState
from sdapi.api.submissions import Submissions
from sdapi.api.v3 import routes as v3
from sdapi.api.watch import JobWatch
from sdapi.backends import Backends, open_backends
from sdapi.catalog.registry import Registry
from sdapi.limits import FailureThrottle
from sdapi.metrics import LocalMetrics
from sdapi.safeurl import UrlPolicy
from sdapi.settings import Settings

DESCRIPTION = """A self-hosted image-generation server speaking the Stable Diffusion API v3.

Every call is a POST with the API key in the body (`key`), a `key` header or
`Authorization: Bearer`. Bodies may be JSON or form data; numbers may be strings and flags
"yes"/"no". Application errors answer HTTP 200 with `status: "error"` (as the real API does)
unless the server runs with `--http-errors`. Job statuses on the wire: `success`, `processing`,
`error`, `failed`, and `cancelled` (sdapi's cancel). A job whose outputs were removed by
retention fetches as `error` with `state: "expired"`.

Webhooks are signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
`webhook-signature`); `sdapi.webhooks.verify` checks one.
"""


def create_app(settings: Settings, backends: Backends | None = None) -> FastAPI:
    """An app serving `settings`; `backends` are opened from the settings' URLs when not given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = backends or open_backends(settings)
        policy = UrlPolicy.from_entries(settings.allow_hosts)
        watch = JobWatch(opened.queue, app.state.draining)
        watch.start()
        app.state.sdapi = AppState(
            settings,
            opened,
            Submissions(settings, opened, policy, app.state.draining, watch),
            throttle=FailureThrottle(settings.max_key_failures),
            registry=Registry.load(settings.models_path),
        )
        stop_housekeeping = start_housekeeping(settings, opened)
        try:
            yield
        finally:
            stop_housekeeping()
            watch.stop()
            if backends is None:
                opened.close()

    app = FastAPI(title="sdapi", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    #: Set when a shutdown starts (sdapi.api.serving): generation calls stop waiting.
    app.state.draining = threading.Event()
    app.state.http_metrics = LocalMetrics()
    app.add_middleware(HttpTiming, local=app.state.http_metrics)
    errors.install(app, http_errors=settings.http_errors)
    openapi.install(app, http_errors=settings.http_errors)
    for router in (health.router, observability.router, *v3.routers, files.router, web.router):
        app.include_router(router)
    return app
