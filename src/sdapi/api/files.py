"""Serves stored images at the URLs answers hand out (local storage)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from sdapi.api.state import state_of
from sdapi.storage.base import content_type, is_valid_name, temp_expiry

router = APIRouter(tags=["images"])

#: Names are random and content never changes once written, so caches may keep it forever.
IMMUTABLE = "public, max-age=31536000, immutable"


async def _serve(request: Request, name: str) -> Response:
    if not is_valid_name(name):
        raise HTTPException(404, "Image not found")
    expiry = temp_expiry(name)
    if expiry is not None and expiry <= time.time():  # gone now, whenever the sweep runs
        raise HTTPException(410, "This temporary link has expired")
    data = await run_in_threadpool(state_of(request).backends.images.get, name)
    if data is None:
        raise HTTPException(404, "Image not found")
    cache = IMMUTABLE if expiry is None else f"public, max-age={int(expiry - time.time())}"
    return Response(data, media_type=content_type(name), headers={"Cache-Control": cache})


#: What the file routes answer, for the OpenAPI document.
FILE_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The PNG, or its base64 text for `.base64` names",
        "content": {"image/png": {}, "text/plain": {}},
    },
    404: {"description": "No such file (or it was removed by retention)"},
}
TEMP_ANSWERS: dict[int | str, dict[str, Any]] = {
    **FILE_ANSWERS,
    410: {"description": "The temporary link has expired"},
}


@router.get(
    "/generations/{file}",
    summary="A generated image",
    response_class=Response,
    responses=FILE_ANSWERS,
)
async def generation(request: Request, file: str) -> Response:
    return await _serve(request, f"generations/{file}")


@router.get(
    "/temp/{file}",
    summary="A generated image behind a temporary link",
    response_class=Response,
    responses=TEMP_ANSWERS,
)
async def temp_generation(request: Request, file: str) -> Response:
    return await _serve(request, f"temp/{file}")


@router.get(
    "/inputs/{file}",
    summary="A stored copy of an input image",
    response_class=Response,
    responses=FILE_ANSWERS,
)
async def input_image(request: Request, file: str) -> Response:
    return await _serve(request, f"inputs/{file}")
