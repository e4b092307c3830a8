"""One error hierarchy. Each error knows its wire message and its HTTP status.

The API renders every `SdapiError` in the v3 error shape (api/errors.py); routes never build error
JSON themselves. By default the wire answers HTTP 200 with `status: "error"`, as the real API does;
`http_status` is used when the operator asks for HTTP status codes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: The wire's tip for a bad key, verbatim (spec 11.3).
INVALID_KEY_TIP = (
    "1. Make sure you are passing Content-Type: application/json in header. "
    "2. Make sure you are doing POST request with valid JSON. "
    "3. Make sure your JSON does not have error, use jsonlint to validate json array. "
    "4. Make sure you have valid API key."
)

Message = str | Mapping[str, Sequence[str]]


class SdapiError(Exception):
    """Base class: an error with a message meant for the client."""

    message: Message = "Something went wrong"
    http_status: int = 400
    #: The wire status word: "error" for bad requests, "failed" for jobs that failed.
    wire_status: str = "error"

    def __init__(self, message: Message | None = None, *, detail: str | None = None) -> None:
        if message is not None:
            self.message = message
        #: A human explanation beside the exact wire message (rendered as `detail`).
        self.detail = detail
        super().__init__(self.message if isinstance(self.message, str) else str(self.message))


class InvalidApiKey(SdapiError):
    message = "Invalid Api Key"
    http_status = 401


class ValidationFailed(SdapiError):
    """Field errors, Laravel style: {"prompt": ["The prompt field is required."]}."""

    http_status = 422

    def __init__(self, errors: Mapping[str, Sequence[str]]) -> None:
        super().__init__({name: list(texts) for name, texts in errors.items()})

    @classmethod
    def one(cls, field: str, text: str) -> ValidationFailed:
        return cls({field: [text]})


class MalformedBody(SdapiError):
    message = "The request body is not valid JSON or form data"
    http_status = 400


class JobNotFound(SdapiError):
    """An unknown id and another key's id answer exactly alike (DESIGN.md section 7)."""

    message = "Request not found"
    http_status = 404


class ModelNotFound(SdapiError):
    """A community-model route named a model this server does not serve (spec 9)."""

    message = "Model id not found"
    http_status = 404


class ImageFetchFailed(SdapiError):
    """A user-supplied image URL that was refused or could not be fetched."""

    message = "Unable to fetch image from provided URL"
    http_status = 400


class InvalidImage(SdapiError):
    """Image data (from a URL or base64) that does not decode to a usable image."""

    message = "The image could not be decoded"
    http_status = 400


class UnsafeUrl(ImageFetchFailed):
    """A URL whose scheme or resolved address is not allowed (SSRF guard)."""


class DatabaseUnavailable(SdapiError):
    """The database could not be reached or dropped the connection mid-call: transient.

    The API answers it in the wire's error shape (HTTP 503 when status codes are on) instead of
    a 500; workers wait and retry. Backends chain the driver's own error as `__cause__`.
    """

    message = "The database is temporarily unavailable, try again shortly"
    http_status = 503


class StorageError(SdapiError):
    message = "The image store failed"
    http_status = 503


class RateLimited(SdapiError):
    """Too many requests or jobs; `retry_after` says when to try again (seconds)."""

    message = "Rate limit exceeded"
    http_status = 429

    def __init__(
        self, message: Message | None = None, *, retry_after: float, detail: str | None = None
    ) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = max(1, math.ceil(retry_after))


class ServerBusy(RateLimited):
    """The whole queue is full: nobody's fault in particular, so a 503 rather than a 429."""

    message = "Server busy: the queue is full, try again later"
    http_status = 503


class ConfigurationError(Exception):
    """Bad operator configuration: reported as one clear line at start, never a traceback."""
