"""Token merging (tomesd) on the real pipelines of the tiny models (CPU).

What matters: merging really changes the images (the tiny UNets' attention runs at 1/2 latent
resolution, where tomesd's default `max_downsample=1` would merge nothing), the same request gives
the same bytes every time, and a cached pipeline is exactly as before once the call is over, even
when it failed. SD3 has no UNet for tomesd to patch and is refused.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from sdapi.catalog.builtins import TINY_SD3_MODEL_ID, TINY_SDXL_MODEL_ID
from sdapi.catalog.families import SD, SD3, SDXL
from sdapi.engine import token_merging
from sdapi.engine.engine import Engine, GenerationCancelled
from sdapi.engine.token_merging import (
    finest_attention_downsample,
    is_patched,
    merged_tokens,
    tomesd_problem,
)
from sdapi.jobs import GenerationRequest, Task
from tests.integration.test_engine import noise_image, png, request

pytestmark = [
    pytest.mark.engine,
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]


@pytest.fixture
def sdxl_engine(engines: dict[str, Engine]) -> Engine:
    return engines[SDXL]


@pytest.fixture
def sd3_engine(engines: dict[str, Engine]) -> Engine:
    return engines[SD3]


def make(
    engine: Engine, req: GenerationRequest, images: dict[str, Image.Image] | None = None
) -> bytes:
    return png(engine.generate(req, images)[0])


def make_merged(
    engine: Engine, req: GenerationRequest, images: dict[str, Image.Image] | None = None
) -> bytes:
    """One image with tokens merged; the UNet is shared, so the text2img pipe covers all tasks."""
    pipe = engine._pipes[Task.TEXT2IMG]
    with merged_tokens(pipe, True):
        assert is_patched(pipe)
        made = make(engine, req, images)
    assert not is_patched(pipe)
    return made


# --- the client-facing check (torch-free) ----------------------------------------------------


@pytest.mark.parametrize("family", [SD, SDXL, None])
def test_tomesd_problem_none_where_tome_applies(family: str | None) -> None:
    assert tomesd_problem(family) is None


def test_tomesd_problem_refuses_sd3() -> None:
    problem = tomesd_problem(SD3)
    assert problem is not None
    assert "SD3" in problem and "tomesd" in problem


def test_finest_attention_downsample_follows_the_unet_layout() -> None:
    def unet(*attention: bool) -> SimpleNamespace:
        blocks = [SimpleNamespace(attentions=[object()] if a else None) for a in attention]
        return SimpleNamespace(down_blocks=blocks)

    assert finest_attention_downsample(unet(True, True, True, False)) == 1  # SD 1.x/2.x
    assert finest_attention_downsample(unet(False, True, True)) == 2  # SDXL
    assert finest_attention_downsample(unet(False, False)) == 2  # the middle block only


# --- SD 1.x on the session engine ------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "width", "height"),
    [(Task.TEXT2IMG, 64, 64), (Task.TEXT2IMG, 128, 64), (Task.IMG2IMG, 64, 64)],
)
def test_merging_changes_the_image_and_leaves_the_pipeline_as_it_was(
    engine: Engine, task: Task, width: int, height: int
) -> None:
    req = request(task, width=width, height=height)
    images = {} if task is Task.TEXT2IMG else {"init": noise_image(5, (width, height))}
    before = make(engine, req, images)
    merged = make_merged(engine, req, images)
    assert merged != before
    assert make(engine, req, images) == before


def test_the_tiny_unets_attention_starts_at_half_resolution(engine: Engine) -> None:
    # Why the default max_downsample=1 would do nothing here (and on SDXL).
    assert finest_attention_downsample(engine._pipes[Task.TEXT2IMG].unet) == 2


def test_merged_images_do_not_depend_on_torchs_global_rng(engine: Engine) -> None:
    # tomesd's use_rand would fork the global RNG: the same request would vary between calls.
    made = []
    with torch.random.fork_rng():
        for seed in (1, 2):
            torch.manual_seed(seed)
            made.append(make_merged(engine, request()))
    assert made[0] == made[1]


def test_merging_nothing_is_diffusers_own_forward(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tomesd's block forward is a copy of an older diffusers one: with no token merged it must
    # still compute exactly what diffusers 0.42 computes.
    before = make(engine, request())
    monkeypatch.setattr(token_merging, "TOME_RATIO", 0.0)
    assert make_merged(engine, request()) == before


def test_the_patch_is_removed_when_the_call_fails(engine: Engine) -> None:
    pipe = engine._pipes[Task.TEXT2IMG]
    before = make(engine, request())
    with pytest.raises(GenerationCancelled), merged_tokens(pipe, True):
        engine.generate(request(), on_step=lambda done, total: False)
    assert not is_patched(pipe)
    assert make(engine, request()) == before


def test_the_patch_is_removed_when_the_block_raises(engine: Engine) -> None:
    pipe = engine._pipes[Task.TEXT2IMG]
    before = make(engine, request())
    with pytest.raises(RuntimeError, match="boom"), merged_tokens(pipe, True):
        make(engine, request())
        raise RuntimeError("boom")
    assert not is_patched(pipe)
    assert make(engine, request()) == before


def test_disabled_changes_nothing(engine: Engine) -> None:
    pipe = engine._pipes[Task.TEXT2IMG]
    before = make(engine, request())
    with merged_tokens(pipe, False):
        assert not is_patched(pipe)
        assert make(engine, request()) == before


# --- SDXL and SD3 --------------------------------------------------------------------------------


def sized(model: str, size: int = 64) -> GenerationRequest:
    return request(model=model, width=size, height=size)


def test_sdxl_merges_tokens(sdxl_engine: Engine) -> None:
    assert finest_attention_downsample(sdxl_engine._pipes[Task.TEXT2IMG].unet) == 2
    before = make(sdxl_engine, sized(TINY_SDXL_MODEL_ID))
    assert make_merged(sdxl_engine, sized(TINY_SDXL_MODEL_ID)) != before
    assert make(sdxl_engine, sized(TINY_SDXL_MODEL_ID)) == before


def test_sd3_is_refused_and_left_alone(sd3_engine: Engine) -> None:
    pipe = sd3_engine._pipes[Task.TEXT2IMG]
    before = make(sd3_engine, sized(TINY_SD3_MODEL_ID))
    with pytest.raises(ValueError, match="SD3"), merged_tokens(pipe, True):
        pytest.fail("the body must not run")
    with merged_tokens(pipe, False):  # what requests without tomesd do
        assert make(sd3_engine, sized(TINY_SD3_MODEL_ID)) == before
