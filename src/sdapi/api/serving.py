"""Running the API under uvicorn with a graceful shutdown that drains in seconds.

On the first SIGTERM/SIGINT uvicorn stops accepting connections and waits for the requests in
flight. Generation calls can sit in their sync window for up to `--sync-timeout`; told that the
server is draining, they answer `processing` at once (the job is already durable), and any new
generation call on a kept-alive connection is refused with a retry-after. Fetches keep working
until the last connection closes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn
from fastapi import FastAPI

HANDLED = (signal.SIGINT, signal.SIGTERM)
#: What uvicorn waits at most for requests in flight once draining (they finish well within).
GRACEFUL_S = 10


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, draining: threading.Event) -> None:
        super().__init__(config)
        self.draining = draining

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.draining.set()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, minus raising the signal again once the API has stopped: `sdapi serve`
        still has its workers to drain then, which that default action would cut short."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def serve_app(app: FastAPI, *, host: str, port: int, log_level: str) -> None:
    """Serve until a signal; returns once the requests in flight are answered."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_S,
        log_config=None,  # uvicorn's lines go through sdapi.logs, in the same format
    )
    DrainingServer(config, app.state.draining).run()
