"""GET /metrics (Prometheus) and GET /ready, and the HTTP timing every request feeds.

/metrics joins the deployment's counters (kept in the database by every process, see
sdapi.metrics) with this process's HTTP latency and the queue's current depth. /ready answers
503 while no worker is alive or the queue is deeper than `--ready-max-queued`, so a load
balancer sends new work elsewhere; /health stays the liveness check.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdapi import metrics
from sdapi.api.state import state_of
from sdapi.metrics import LocalMetrics, Sample

router = APIRouter(tags=["operations"])

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics_page(request: Request) -> Response:
    state = state_of(request)
    queue = state.backends.queue
    stored = await run_in_threadpool(queue.metrics)
    stats = await run_in_threadpool(queue.stats)
    gauges: list[Sample] = [
        ("sdapi_queue_jobs", metrics.labels(state="queued"), float(stats.queued)),
        ("sdapi_queue_jobs", metrics.labels(state="processing"), float(stats.processing)),
        ("sdapi_workers_live", "", float(stats.live_workers)),
    ]
    local: LocalMetrics = request.app.state.http_metrics
    body = metrics.render([*stored, *gauges, *local.samples()])
    return Response(body, media_type=PROMETHEUS_TEXT)


@router.get(
    "/ready",
    summary="Readiness: a worker is alive and the queue is not too deep",
    responses={503: {"description": "Not ready: `reasons` says why"}},
)
async def ready(request: Request) -> JSONResponse:
    state = state_of(request)
    stats = await run_in_threadpool(state.backends.queue.stats)
    reasons = []
    if stats.live_workers == 0:
        reasons.append("no worker is alive")
    bound = state.settings.ready_max_queued
    if bound and stats.queued > bound:
        reasons.append(f"{stats.queued} jobs queued (more than {bound})")
    body: dict[str, Any] = {
        "status": "not ready" if reasons else "ready",
        "workers": stats.live_workers,
        "queued": stats.queued,
    }
    if reasons:
        body["reasons"] = reasons
    return JSONResponse(body, status_code=503 if reasons else 200)


class HttpTiming:
    """ASGI middleware: each answer's time by route template, method and status, kept in
    `local` (templates, not paths, so /fetch/1 and /fetch/2 are one series)."""

    def __init__(self, app: ASGIApp, local: LocalMetrics) -> None:
        self.app = app
        self.local = local

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.local.add(
                metrics.histogram(
                    "sdapi_http_request_seconds",
                    time.perf_counter() - started,
                    metrics.HTTP_SECONDS,
                    route=path,
                    method=scope["method"],
                    status=status,
                )
            )
