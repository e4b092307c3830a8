"""Who is calling: the API key from the body, a `key` header, or `Authorization: Bearer`."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from sdapi.auth.keys import ApiKey, KeyStore
from sdapi.errors import InvalidApiKey, RateLimited
from sdapi.limits import FailureThrottle

MAX_KEY_LENGTH = 256
TOO_MANY_FAILURES = "Rate limit exceeded: too many invalid API keys from this address"


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


async def authenticate(
    request: Request, body: dict[str, Any], keys: KeyStore, throttle: FailureThrottle
) -> ApiKey:
    """The caller's active key. An address that keeps sending bad keys is refused for a while
    before any lookup, so guessing keys costs the guesser, not the database."""
    address = request.client.host if request.client else "unknown"
    if (wait := throttle.blocked(address)) is not None:
        raise RateLimited(TOO_MANY_FAILURES, retry_after=wait)
    secret = key_from(request, body)
    key = None
    # Issued keys are short ASCII: anything else is no key, and is never hashed or looked up
    # (a lone surrogate from a JSON escape cannot even be encoded for hashing).
    if secret and len(secret) <= MAX_KEY_LENGTH and secret.isascii():
        key = await run_in_threadpool(keys.verify, secret)
    if key is None:
        throttle.failed(address)
        raise InvalidApiKey
    return key
