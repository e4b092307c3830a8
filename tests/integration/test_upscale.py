"""The super-resolution engine on diffusers' real x4 upscaler pipeline, with the built-in tiny
upscaler (built offline, loaded by from_pretrained, CPU only); and a text-to-image engine's own
"SD upscale". Inputs are small and steps few, so the file stays within seconds on 2 cores."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdapi.catalog.builtins import TINY_MODEL_ID, TINY_UPSCALER_ID
from sdapi.catalog.models import UPSCALE_PIPELINE, check_upscaler_ref
from sdapi.engine.engine import Engine, GenerationCancelled
from sdapi.engine.tiny import build_tiny_upscaler
from sdapi.engine.upscale import UpscaleEngine
from sdapi.jobs import GenerationRequest, Task

pytestmark = [
    pytest.mark.engine,
    # diffusers' schedulers hand torch tensors to numpy; numpy 2 deprecates the protocol torch uses.
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def upscaler(models_dir: Path) -> Iterator[UpscaleEngine]:
    engine = UpscaleEngine(TINY_UPSCALER_ID, models_dir)
    engine.load()
    yield engine
    engine.unload()


def request(
    size: tuple[int, int] = (32, 24), scale: int = 4, **changes: object
) -> GenerationRequest:
    values: dict[str, object] = {
        "task": Task.UPSCALE,
        "model": TINY_UPSCALER_ID,
        "prompt": "",
        "negative_prompt": "",
        "width": size[0] * scale,
        "height": size[1] * scale,
        "samples": 1,
        "steps": 2,
        "guidance_scale": 1.0,
        "seed": 1234,
        "scale": scale,
        "noise_level": 20,
    }
    return GenerationRequest(**{**values, **changes})  # type: ignore[arg-type]


def source(size: tuple[int, int] = (32, 24)) -> Image.Image:
    """A gradient, so the input has structure for the upscaler to see."""
    x = np.linspace(0, 255, size[0], dtype=np.uint8)
    y = np.linspace(0, 255, size[1], dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(x[None, :], y[:, None], 128 * np.ones((1, 1))), axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_the_tiny_upscaler_is_a_real_x4_upscaler_folder(models_dir: Path) -> None:
    folder = build_tiny_upscaler(models_dir / TINY_UPSCALER_ID)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == UPSCALE_PIPELINE
    assert index["low_res_scheduler"] == ["diffusers", "DDPMScheduler"]
    unet = json.loads((folder / "unet" / "config.json").read_text())
    assert (unet["in_channels"], unet["num_class_embeds"]) == (7, 1000)
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert (len(vae["block_out_channels"]), vae["scaling_factor"]) == (3, 0.08333)
    assert build_tiny_upscaler(folder) == folder  # built once
    assert check_upscaler_ref(str(folder)) == str(folder.resolve())


def test_scale_4_gives_4x_the_size_and_the_same_bytes_for_the_same_seed(
    upscaler: UpscaleEngine,
) -> None:
    first = upscaler.upscale(request(), source())
    assert first.size == (128, 96) and first.mode == "RGB"
    assert digest(upscaler.upscale(request(), source())) == digest(first)
    assert digest(upscaler.upscale(request(seed=99), source())) != digest(first)
    assert np.asarray(first).std() > 1  # decoded pixels, not a constant


def test_scale_2_is_the_x4_image_resized_down_with_lanczos(upscaler: UpscaleEngine) -> None:
    x4 = upscaler.upscale(request(scale=4), source())
    x2 = upscaler.upscale(request(scale=2), source())
    assert x2.size == (64, 48)
    assert digest(x2) == digest(x4.resize((64, 48), Image.Resampling.LANCZOS))
    assert upscaler.upscale(request(scale=3), source()).size == (96, 72)


def test_sides_that_are_not_multiples_of_4_still_give_the_exact_size(
    upscaler: UpscaleEngine,
) -> None:
    assert upscaler.upscale(request((30, 18)), source((30, 18))).size == (120, 72)


def test_a_prompt_and_guidance_run_the_guided_path(upscaler: UpscaleEngine) -> None:
    guided = request(prompt="a photo of a cat", guidance_scale=7.5)
    assert upscaler.upscale(guided, source()).size == (128, 96)


def test_progress_is_reported_per_step_and_returning_false_cancels(
    upscaler: UpscaleEngine,
) -> None:
    seen: list[tuple[int, int]] = []
    batch = upscaler.generate_batch_checked(
        [request(steps=3)],
        [{"init": source()}],
        1,
        lambda done, total: not seen.append((done, total)),
    )
    assert seen == [(1, 3), (2, 3), (3, 3)] and batch.nsfw == [[False]]
    with pytest.raises(GenerationCancelled):
        upscaler.generate_batch_checked(
            [request(steps=3)], [{"init": source()}], 1, lambda done, total: done < 2
        )


def test_a_batch_pads_its_calls_and_keeps_each_image_its_own(upscaler: UpscaleEngine) -> None:
    a, b = request(seed=1), request(seed=2)
    inputs = [{"init": source()}, {"init": source().transpose(Image.Transpose.FLIP_LEFT_RIGHT)}]
    together = upscaler.generate_batch_checked([a, b], inputs, 2).images
    assert [len(images) for images in together] == [1, 1]
    assert digest(together[0][0]) != digest(together[1][0])


def test_requests_the_upscaler_cannot_run_are_refused(upscaler: UpscaleEngine) -> None:
    with pytest.raises(ValueError, match="not the 256x256"):
        upscaler.upscale(request(width=256, height=256), source())
    with pytest.raises(ValueError, match="not text2img"):
        upscaler.upscale(request(task=Task.TEXT2IMG), source())
    assert upscaler.memory_bytes() > 0


def test_a_text_to_image_engine_runs_an_upscale_as_img2img_on_the_enlarged_input(
    engine: Engine,
) -> None:
    sd_upscale = request(model=TINY_MODEL_ID, scale=2, strength=0.5)  # 32x24 in, 64x48 out
    image = engine.generate(sd_upscale, {"init": source()})[0]
    enlarged = source().resize((64, 48), Image.Resampling.LANCZOS)
    as_img2img = replace(sd_upscale, task=Task.IMG2IMG, scale=None)
    assert digest(image) == digest(engine.generate(as_img2img, {"init": enlarged})[0])
