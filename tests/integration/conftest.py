"""Fixtures for the engine tier: one tiny model built and loaded per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdapi.engine.engine import Engine
from sdapi.engine.tiny import TINY_MODEL_ID


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def engine(models_dir: Path) -> Engine:
    engine = Engine(TINY_MODEL_ID, models_dir)
    engine.load()
    return engine
