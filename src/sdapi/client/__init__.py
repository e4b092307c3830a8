"""A Python client for sdapi (and other servers speaking the Stable Diffusion API v3).

    from sdapi import Client

    with Client("http://127.0.0.1:7860", key) as client:
        job = client.text2img("a lighthouse at dawn", width=512, height=512, wait=True)
        paths = client.save(job, "out/")

`AsyncClient` has the same methods, awaited. Errors the server reports raise `ClientError`
subclasses; network failures propagate as `httpx.HTTPError`.
"""

from __future__ import annotations

from sdapi.client._async import AsyncClient
from sdapi.client._core import Destination, ImageInput, OnUpdate
from sdapi.client._errors import (
    ApiError,
    ClientError,
    JobCancelled,
    JobFailed,
    ProtocolError,
    WaitTimeout,
)
from sdapi.client._models import CancelResult, JobResult, JobSummary, Polling, SystemLoad
from sdapi.client._sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "CancelResult",
    "Client",
    "ClientError",
    "Destination",
    "ImageInput",
    "JobCancelled",
    "JobFailed",
    "JobResult",
    "JobSummary",
    "OnUpdate",
    "Polling",
    "ProtocolError",
    "SystemLoad",
    "WaitTimeout",
]
