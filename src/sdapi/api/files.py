"""Serves stored images at the URLs answers hand out (local storage)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from sdapi.api.state import state_of

router = APIRouter(tags=["images"])

#: Names are random and content never changes once written, so caches may keep it forever.
IMMUTABLE = "public, max-age=31536000, immutable"


async def _serve(request: Request, name: str) -> Response:
    data = await run_in_threadpool(state_of(request).backends.images.get, name)
    if data is None:
        raise HTTPException(404, "Image not found")
    return Response(data, media_type="image/png", headers={"Cache-Control": IMMUTABLE})


@router.get("/generations/{file}", summary="A generated image")
async def generation(request: Request, file: str) -> Response:
    return await _serve(request, f"generations/{file}")


@router.get("/inputs/{file}", summary="A stored copy of an input image")
async def input_image(request: Request, file: str) -> Response:
    return await _serve(request, f"inputs/{file}")
