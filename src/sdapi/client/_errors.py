"""The client's exceptions: one base class, so callers can catch everything the server said.

Network failures are not wrapped: they propagate as `httpx.HTTPError` subclasses
(`httpx.ConnectError`, `httpx.TimeoutException`, ...), which callers already know how to retry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdapi.client._models import JobResult

#: A v3 error message: a sentence, or Laravel-style field errors {"prompt": ["..."]}.
Message = str | Mapping[str, Sequence[str]]


def message_text(message: Message | None) -> str:
    """One readable line, also for field errors (which arrive as a dict)."""
    if message is None:
        return ""
    if isinstance(message, str):
        return message
    return "; ".join(f"{name}: {' '.join(texts)}" for name, texts in message.items())


class ClientError(Exception):
    """Base of every error this client raises itself."""


class ApiError(ClientError):
    """The server answered `status: "error"` (HTTP 200, or 4xx/5xx with --http-errors)."""

    def __init__(self, message: Message, body: Mapping[str, Any], status_code: int) -> None:
        #: The server's message, verbatim: a str, or a dict {field: [messages]} for validation.
        self.message = message
        #: The whole JSON answer (it may carry `tip`, `detail`, `state`, ...).
        self.body = dict(body)
        #: The HTTP status: 200 unless the server runs with --http-errors.
        self.status_code = status_code
        super().__init__(message_text(message) or "The server answered an error")


class ProtocolError(ClientError):
    """An answer that is not what the protocol promises: not a JSON object, an HTTP error with
    no JSON body (a proxy's 502 page), or an image download that failed."""

    def __init__(self, text: str, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(text)


class _JobEnded(ClientError):
    """Carries the last answer about the job, so callers still have its id and message."""

    def __init__(self, result: JobResult, text: str) -> None:
        self.result = result
        self.message = result.message
        super().__init__(text)


class JobFailed(_JobEnded):
    """The job ended `failed`: the server gave up on it (the reason is in `result.raw["error"]`)."""

    def __init__(self, result: JobResult) -> None:
        detail = result.raw.get("error")
        text = message_text(result.message) or "Job failed"
        suffix = f" ({detail})" if isinstance(detail, str) and detail else ""
        super().__init__(result, f"Job {result.id}: {text}{suffix}")


class JobCancelled(_JobEnded):
    """The job was cancelled (by this key, from anywhere) before it produced images."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(result, f"Job {result.id}: {message_text(result.message) or 'cancelled'}")


class WaitTimeout(_JobEnded):
    """`wait(timeout=...)` ran out; the job itself goes on (cancel it if it is not wanted)."""

    def __init__(self, result: JobResult, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(result, f"Job {result.id} still {result.status} after {timeout:g} s")
