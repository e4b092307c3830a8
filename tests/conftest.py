"""Fixtures shared by every tier."""

from __future__ import annotations

import os

import pytest

from tests.helpers import FakeClock

# Quiet the model stack in every test process (and the servers tests start inherit it).
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
