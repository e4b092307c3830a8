"""Who is calling: the API key from the body, a `key` header, or `Authorization: Bearer`."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from sdapi.auth.keys import ApiKey, KeyStore
from sdapi.errors import InvalidApiKey

MAX_KEY_LENGTH = 256


def key_from(request: Request, body: dict[str, Any]) -> str | None:
    candidates = (
        body.get("key"),
        request.headers.get("key"),
        _bearer(request.headers.get("authorization", "")),
    )
    for value in candidates:
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _bearer(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    return token if scheme.lower() == "bearer" else None


async def authenticate(request: Request, body: dict[str, Any], keys: KeyStore) -> ApiKey:
    secret = key_from(request, body)
    if not secret or len(secret) > MAX_KEY_LENGTH:
        raise InvalidApiKey
    key = await run_in_threadpool(keys.verify, secret)
    if key is None:
        raise InvalidApiKey
    return key
