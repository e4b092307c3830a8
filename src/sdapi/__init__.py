"""sdapi: a self-hosted image-generation server speaking the Stable Diffusion API v3."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sdapi.client import (
        ApiError,
        AsyncClient,
        CancelResult,
        Client,
        ClientError,
        JobCancelled,
        JobFailed,
        JobResult,
        JobSummary,
        Polling,
        ProtocolError,
        SystemLoad,
        WaitTimeout,
    )

__all__ = [
    "ApiError",
    "AsyncClient",
    "CancelResult",
    "Client",
    "ClientError",
    "JobCancelled",
    "JobFailed",
    "JobResult",
    "JobSummary",
    "Polling",
    "ProtocolError",
    "SystemLoad",
    "WaitTimeout",
    "__version__",
]

#: The client names, loaded from sdapi.client on first use: every server module imports sdapi,
#: and none of them should pay for httpx and the client.
_CLIENT_NAMES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from sdapi import client

        return getattr(client, name)
    raise AttributeError(f"module 'sdapi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_CLIENT_NAMES})
