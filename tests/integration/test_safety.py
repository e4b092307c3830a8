"""The NSFW safety checker on real pipelines, with the built-in tiny checkers (CPU, offline).

`sdapi-tiny-checker` never flags (concept weights 1), so images must come back byte-identical;
`sdapi-tiny-checker-flag-all` flags everything (concept weights -1), which forces the NSFW path:
each replacement and the per-image flags.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdapi.catalog.builtins import TINY_MODEL_ID
from sdapi.engine.engine import CheckedBatch, Engine
from sdapi.engine.safety import (
    FLAG_ALL_CHECKER_ID,
    SAFETY_CHECKER_ENV,
    TINY_CHECKER_ID,
    build_tiny_checker,
)
from sdapi.errors import ConfigurationError
from sdapi.jobs import Task
from tests.integration.test_engine import center_mask, noise_image, pixels, png, request

pytestmark = [
    pytest.mark.engine,
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]


@pytest.fixture
def flag_all(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """The session engine with the checker that flags every image."""
    monkeypatch.setattr(engine, "safety_checker", FLAG_ALL_CHECKER_ID)
    return engine


@pytest.fixture(autouse=True)
def no_checker_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SAFETY_CHECKER_ENV, raising=False)


def test_the_default_tiny_checker_passes_images_untouched(engine: Engine) -> None:
    plain = [png(image) for image in engine.generate(request(samples=2))]
    images, nsfw = engine.generate_checked(request(samples=2, safety_checker=True))
    assert nsfw == [False, False]
    assert [png(image) for image in images] == plain


def test_without_the_checker_nothing_is_flagged(flag_all: Engine) -> None:
    images, nsfw = flag_all.generate_checked(request(samples=2))
    assert nsfw == [False, False]  # not checked: the request did not ask
    assert pixels(images[0]).std() > 1


@pytest.mark.parametrize("kind", ["black", "blur", "pixelate", "sensitive_content_text"])
def test_flagged_images_are_replaced(flag_all: Engine, kind: str) -> None:
    plain = flag_all.generate(request(samples=2))
    images, nsfw = flag_all.generate_checked(
        request(samples=2, safety_checker=True, safety_checker_type=kind)
    )
    assert nsfw == [True, True]
    for original, image in zip(plain, images, strict=True):
        assert image.size == original.size and image.mode == "RGB"
        assert png(image) != png(original)
        if kind == "black":
            assert not pixels(image).any()
        elif kind == "sensitive_content_text":  # white letters on black
            assert pixels(image).max() > 200 and (pixels(image) == 0).mean() > 0.6
        else:  # the content is hidden: far smoother than the generated noise
            assert _roughness(image) < _roughness(original) / 2


def _roughness(image: Image.Image) -> float:
    return float(np.abs(np.diff(pixels(image), axis=1)).mean())


def test_each_request_of_a_batch_has_its_own_settings(flag_all: Engine) -> None:
    asks = request(samples=1, seed=10, safety_checker=True, safety_checker_type="black")
    blurs = request(samples=2, seed=20, safety_checker=True, safety_checker_type="blur")
    skips = request(samples=1, seed=30)
    result = flag_all.generate_batch_checked([asks, blurs, skips], [{}, {}, {}], rows=4)
    assert isinstance(result, CheckedBatch)
    assert result.nsfw == [[True], [True, True], [False]]
    assert not pixels(result.images[0][0]).any()
    assert pixels(result.images[1][0]).any()  # blurred, not black
    # The one that did not ask is exactly what it would have been in the same call unchecked.
    unchecked_requests = [replace(asks, safety_checker=False), replace(blurs, safety_checker=False)]
    unchecked = flag_all.generate_batch([*unchecked_requests, skips], [{}] * 3, rows=4)
    assert png(result.images[2][0]) == png(unchecked[2][0])
    assert pixels(unchecked[0][0]).any()


def test_generate_batch_keeps_its_type_and_still_replaces(flag_all: Engine) -> None:
    images = flag_all.generate_batch([request(safety_checker=True)], [{}], rows=1)
    assert isinstance(images, list) and isinstance(images[0], list)
    assert not pixels(images[0][0]).any()


def test_inpaint_results_are_checked_after_the_paste(flag_all: Engine) -> None:
    images, nsfw = flag_all.generate_checked(
        request(Task.INPAINT, safety_checker=True),
        {"init": noise_image(1), "mask": center_mask()},
    )
    assert nsfw == [True]
    assert not pixels(images[0]).any()  # the unmasked init pixels are hidden too


def test_the_environment_chooses_the_checker(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "safety_checker", None)
    monkeypatch.setenv(SAFETY_CHECKER_ENV, FLAG_ALL_CHECKER_ID)
    assert engine.generate_checked(request(safety_checker=True))[1] == [True]


def test_the_operator_s_checker_folder_is_used(
    engine: Engine, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """<models_dir>/safety_checker wins over the built-in default, even for tiny models."""
    folder = models_dir / "safety_checker"
    shutil.copytree(
        build_tiny_checker(models_dir / FLAG_ALL_CHECKER_ID, FLAG_ALL_CHECKER_ID), folder
    )
    try:
        assert engine.generate_checked(request(safety_checker=True))[1] == [True]
    finally:
        shutil.rmtree(folder)
    assert engine.generate_checked(request(safety_checker=True))[1] == [False]


def test_a_model_without_a_checker_fails_before_any_work(
    engine: Engine, models_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "my-model"
    shutil.copytree(models_dir / TINY_MODEL_ID, folder)
    local = Engine(str(folder), tmp_path / "models")
    steps: list[int] = []
    with pytest.raises(ConfigurationError, match="no safety checker is installed"):
        local.generate(request(safety_checker=True), on_step=lambda done, _: steps.append(done))
    assert steps == []
    assert len(local.generate(request())) == 1  # requests without the checker still run


def test_the_built_in_checkers_build_once_and_deterministically(tmp_path: Path) -> None:
    first = build_tiny_checker(tmp_path / "a", TINY_CHECKER_ID)
    second = build_tiny_checker(tmp_path / "b", TINY_CHECKER_ID)
    files = sorted(path.name for path in first.iterdir())
    assert files == ["config.json", "model.safetensors", "preprocessor_config.json"]
    weights = "model.safetensors"
    assert (first / weights).read_bytes() == (second / weights).read_bytes()
    assert build_tiny_checker(first, TINY_CHECKER_ID) == first  # already there: kept
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "b"]  # no temporary left
    with pytest.raises(ConfigurationError):
        build_tiny_checker(tmp_path / "c", "no-such-checker")
