"""Fixtures for the engine tier: each tiny model built and loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdapi.catalog.builtins import TINY_MODEL_ID, TINY_SD3_MODEL_ID, TINY_SDXL_MODEL_ID
from sdapi.catalog.families import SD, SD3, SDXL
from sdapi.engine.engine import Engine

#: The built-in tiny model of each family.
MODELS = {SD: TINY_MODEL_ID, SDXL: TINY_SDXL_MODEL_ID, SD3: TINY_SD3_MODEL_ID}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def engine(models_dir: Path) -> Engine:
    engine = Engine(TINY_MODEL_ID, models_dir)
    engine.load()
    return engine


@pytest.fixture(scope="session")
def engines(engine: Engine, models_dir: Path) -> dict[str, Engine]:
    """One loaded engine per family, shared by every test module; SD's is `engine`."""
    loaded = {SD: engine}
    for family in (SDXL, SD3):
        loaded[family] = Engine(MODELS[family], models_dir)
        loaded[family].load()
    return loaded
