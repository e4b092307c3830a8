"""Fixtures of the unit tier's in-process API server (tests.unit.test_api_v3.start_server)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sdapi.settings import Settings
from tests.unit.test_api_v3 import Server, start_server


@pytest.fixture
def server() -> Iterator[Server]:
    yield from start_server(Settings(sync_timeout=10), worker=True)


@pytest.fixture
def idle_server() -> Iterator[Server]:
    """No worker: every job stays queued, so answers are `processing`."""
    yield from start_server(Settings(sync_timeout=0), worker=False)
