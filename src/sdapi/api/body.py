"""Reading request bodies the way the real (Laravel) API did: JSON or form, leniently."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from sdapi.errors import MalformedBody

#: Bodies larger than this are refused before parsing (base64 images make bodies big).
MAX_BODY_BYTES = 32 * 1024 * 1024


async def read_body(request: Request) -> dict[str, Any]:
    """The body as a dict: JSON, urlencoded or multipart; an empty body is {}."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise MalformedBody(f"The request body is larger than {MAX_BODY_BYTES} bytes")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _multipart(request)
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise MalformedBody(f"The request body is larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    if ctype == "application/x-www-form-urlencoded":
        return _form(raw)
    # JSON is the documented form; clients that send no content type usually send JSON too.
    try:
        data = json.loads(raw)
    except RecursionError:  # thousands of nested [ or {: no request field is nested at all
        raise MalformedBody(detail="the JSON body is nested too deeply") from None
    except (UnicodeDecodeError, ValueError):
        if ctype in ("", "text/plain"):
            return _form(raw)
        raise MalformedBody(detail="the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise MalformedBody(detail="the JSON body must be an object")
    return data


async def _multipart(request: Request) -> dict[str, Any]:
    try:
        # Base64 images arrive as large text parts; Starlette's 1 MB default would refuse them.
        form = await request.form(max_part_size=MAX_BODY_BYTES)
    except (MultiPartException, HTTPException) as exc:
        # Starlette answers a broken multipart body with its own HTTP 400; the wire wants the
        # v3 error (HTTP 200 unless --http-errors) like any other malformed body.
        why = exc.message if isinstance(exc, MultiPartException) else exc.detail
        raise MalformedBody(detail=f"the multipart body is not valid: {why}") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _form(raw: bytes) -> dict[str, Any]:
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise MalformedBody(detail="the body is neither JSON nor form data") from None
    return dict(pairs)
