"""What every route needs, kept on `app.state` by the app factory (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

from sdapi.backends import Backends
from sdapi.catalog.registry import Registry
from sdapi.limits import FailureThrottle, RateLimiter
from sdapi.settings import Settings

if TYPE_CHECKING:
    from sdapi.api.submissions import Submissions


@dataclass
class AppState:
    settings: Settings
    backends: Backends
    submissions: Submissions
    #: The model registry, read once at start (a changed file takes effect on restart).
    registry: Registry = field(default_factory=Registry)
    #: Per-process request limits (see sdapi.limits).
    limiter: RateLimiter = field(default_factory=RateLimiter)
    throttle: FailureThrottle = field(default_factory=lambda: FailureThrottle(0))

    def base_url(self, request: Request) -> str:
        """Public base URL: the configured one, else the URL this request came in on."""
        return (self.settings.public_url or str(request.base_url)).rstrip("/")


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.sdapi
    return state
