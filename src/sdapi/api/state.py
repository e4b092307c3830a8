"""What every route needs, kept on `app.state` by the app factory (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from sdapi.api.submissions import Submissions
from sdapi.backends import Backends
from sdapi.settings import Settings


@dataclass
class AppState:
    settings: Settings
    backends: Backends
    submissions: Submissions

    def base_url(self, request: Request) -> str:
        """Public base URL: the configured one, else the URL this request came in on."""
        return (self.settings.public_url or str(request.base_url)).rstrip("/")


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.sdapi
    return state
