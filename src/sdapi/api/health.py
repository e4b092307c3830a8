"""Liveness: 200 once the API can reach its queue, with the live worker count."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from sdapi import __version__
from sdapi.api.state import state_of

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness and queue summary")
async def health(request: Request) -> dict[str, object]:
    stats = await run_in_threadpool(state_of(request).backends.queue.stats)
    return {
        "status": "ok",
        "version": __version__,
        "workers": stats.live_workers,
        "queued": stats.queued,
        "processing": stats.processing,
    }
