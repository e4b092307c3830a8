"""The engine on real diffusers pipelines, with the built-in tiny model (no download, CPU only).

One Engine is loaded per session (loading costs seconds); images are 64 px and 2-4 steps so the
whole file stays fast on 2 cores.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdapi.catalog.builtins import TINY_MODEL_ID
from sdapi.catalog.schedulers import SCHEDULERS, UNSUPPORTED, is_supported
from sdapi.engine import tiny
from sdapi.engine.engine import Engine, GenerationCancelled
from sdapi.engine.models import resolve_model_source
from sdapi.engine.schedulers import make_scheduler
from sdapi.engine.tiny import build_tiny_model
from sdapi.errors import ConfigurationError
from sdapi.jobs import GenerationRequest, Task

pytestmark = [
    pytest.mark.engine,
    # diffusers' schedulers hand torch tensors to numpy; numpy 2 deprecates the protocol torch uses.
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]

SIZE = 64
WIRE_SCHEDULERS = [
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "UniPCMultistepScheduler",
    "DDIMInverseScheduler",
    "DEISMultistepScheduler",
    "IPNDMScheduler",
    "KarrasVeScheduler",
    "ScoreSdeVeScheduler",
    "LCMScheduler",
]


def request(task: Task = Task.TEXT2IMG, **changes: object) -> GenerationRequest:
    base = GenerationRequest(
        task=task,
        model=TINY_MODEL_ID,
        prompt="a photo of a cat",
        negative_prompt="blurry",
        width=SIZE,
        height=SIZE,
        samples=1,
        steps=2,
        guidance_scale=7.5,
        seed=1234,
        strength=None if task is Task.TEXT2IMG else 0.75,
    )
    return replace(base, **changes)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def noise_image(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(rgb, "RGB")


def center_mask() -> Image.Image:
    """White (repaint) in the middle quarter, black (keep) around it."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def file_digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="session")
def tiny_folder(engine: Engine, models_dir: Path) -> Path:
    """The tiny model the session engine built and loaded."""
    return models_dir / TINY_MODEL_ID


# --- the tiny model -------------------------------------------------------------------------


def test_tiny_model_builds_a_diffusers_folder_once(
    tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "models" / TINY_MODEL_ID
    assert build_tiny_model(dest) == dest
    assert (dest / "model_index.json").is_file()
    assert (dest / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert [p.name for p in dest.parent.iterdir()] == [TINY_MODEL_ID]  # no temp dir left behind
    # Deterministic: the same bytes as the session's independent build.
    assert file_digests(dest) == file_digests(tiny_folder)

    def must_not_build() -> None:
        raise AssertionError("rebuilt an existing model")

    monkeypatch.setattr(tiny, "_tiny_pipeline", must_not_build)
    assert build_tiny_model(dest) == dest


def test_tiny_model_build_tolerates_losing_the_race(
    tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / TINY_MODEL_ID
    real_pipeline = tiny._tiny_pipeline

    def rival_finishes_first():  # another process renames its copy into place meanwhile
        shutil.copytree(tiny_folder, dest)
        return real_pipeline()

    monkeypatch.setattr(tiny, "_tiny_pipeline", rival_finishes_first)
    assert build_tiny_model(dest) == dest
    assert file_digests(dest) == file_digests(tiny_folder)
    assert [p.name for p in tmp_path.iterdir()] == [TINY_MODEL_ID]


def test_tiny_model_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    dest = tmp_path / TINY_MODEL_ID
    dest.mkdir()
    (dest / "notes.txt").write_text("not a model")
    with pytest.raises(ConfigurationError, match="not a diffusers model folder"):
        build_tiny_model(dest)
    assert (dest / "notes.txt").read_text() == "not a model"


# --- text2img and determinism ---------------------------------------------------------------


def test_text2img_gives_the_requested_number_and_size(engine: Engine) -> None:
    images = engine.generate(request(samples=2, width=64, height=48))
    assert len(images) == 2
    assert all(image.size == (64, 48) and image.mode == "RGB" for image in images)
    assert pixels(images[0]).std() > 1  # noise from random weights, but not a blank image


def test_same_request_gives_identical_bytes(engine: Engine, models_dir: Path) -> None:
    req = request(samples=2)
    first = [png(image) for image in engine.generate(req)]
    assert [png(image) for image in engine.generate(req)] == first
    fresh = Engine(TINY_MODEL_ID, models_dir)
    fresh.load()
    assert [png(image) for image in fresh.generate(req)] == first


def test_different_seeds_give_different_images(engine: Engine) -> None:
    one = engine.generate(request(seed=1))[0]
    two = engine.generate(request(seed=2))[0]
    assert png(one) != png(two)


def test_each_image_depends_only_on_its_own_seed(engine: Engine) -> None:
    batch = engine.generate(request(samples=2, seed=40))
    alone = engine.generate(request(samples=1, seed=41))[0]
    # Batched float maths may round differently by one level (research/feasibility.md, 3).
    assert np.abs(pixels(batch[1]) - pixels(alone)).max() <= 1
    assert png(batch[0]) != png(batch[1])


def test_max_seed_is_accepted(engine: Engine) -> None:
    images = engine.generate(request(seed=2**64 - 1))
    assert len(images) == 1


# --- img2img and inpaint ---------------------------------------------------------------------


def test_img2img_returns_the_requested_size(engine: Engine) -> None:
    init = noise_image(1, size=(80, 40))  # resized to the request's size
    images = engine.generate(request(Task.IMG2IMG, samples=2), {"init": init})
    assert [image.size for image in images] == [(SIZE, SIZE)] * 2
    other = engine.generate(request(Task.IMG2IMG, samples=1), {"init": noise_image(2)})
    assert png(images[0]) != png(other[0])  # the init image matters


def test_inpaint_repaints_only_the_masked_area(engine: Engine) -> None:
    init = noise_image(3)
    mask = center_mask()
    images = engine.generate(
        request(Task.INPAINT, samples=2, strength=1.0), {"init": init, "mask": mask}
    )
    keep = np.asarray(mask) == 0
    for image in images:
        assert image.size == (SIZE, SIZE)
        diff = np.abs(pixels(image) - pixels(init))
        assert diff[keep].max() <= 2
        assert diff[~keep].mean() > 10


def test_inpaint_accepts_an_rgb_mask_of_another_size(engine: Engine) -> None:
    mask = center_mask().resize((128, 128)).convert("RGB")
    images = engine.generate(request(Task.INPAINT), {"init": noise_image(4), "mask": mask})
    assert images[0].size == (SIZE, SIZE)


def test_missing_input_image_is_a_value_error(engine: Engine) -> None:
    with pytest.raises(ValueError, match="'mask'"):
        engine.generate(request(Task.INPAINT), {"init": noise_image(5)})
    with pytest.raises(ValueError, match="'init'"):
        engine.generate(request(Task.IMG2IMG))


# --- models ------------------------------------------------------------------------------------


def test_model_from_a_local_diffusers_folder(
    engine: Engine, tiny_folder: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "my-model"
    shutil.copytree(tiny_folder, folder)
    local = Engine(str(folder), tmp_path / "models")
    images = local.generate(request())
    assert png(images[0]) == png(engine.generate(request())[0])
    assert not (tmp_path / "models" / TINY_MODEL_ID).exists()  # it did not fall back to tiny


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("/no/such/model", "does not exist"),
        ("./missing-model", "does not exist"),
        ("weights.safetensors", "does not exist"),
        ("not a model!", "neither"),
        ("a/b/c/d e", "does not exist"),
        ("owner--x/name", "neither"),
        ("ownér/name", "neither"),
    ],
)
def test_bad_model_refs_are_configuration_errors(ref: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=message):
        resolve_model_source(ref, tmp_path)
    with pytest.raises(ConfigurationError):
        Engine(ref, tmp_path).load()


def test_folder_without_model_index_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"model_index\.json"):
        Engine(str(tmp_path), tmp_path).load()


def test_broken_model_folder_is_a_configuration_error(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match=r"cannot load model .*broken"):
        Engine(str(folder), tmp_path).load()


def test_repo_ids_pass_through_unresolved(tmp_path: Path) -> None:
    assert resolve_model_source("stabilityai/sd-turbo", tmp_path) == "stabilityai/sd-turbo"


# --- schedulers --------------------------------------------------------------------------------


def test_every_wire_scheduler_is_classified() -> None:
    assert set(SCHEDULERS) | set(UNSUPPORTED) == set(WIRE_SCHEDULERS)
    assert not set(SCHEDULERS) & set(UNSUPPORTED)
    assert is_supported("EulerDiscreteScheduler")
    assert not is_supported("KarrasVeScheduler")


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("task", list(Task))
def test_supported_scheduler_makes_images(engine: Engine, name: str, task: Task) -> None:
    req = request(task, scheduler=name)
    images = engine.generate(req, {"init": noise_image(6), "mask": center_mask()})
    assert images[0].size == (SIZE, SIZE)
    assert pixels(images[0]).std() > 1  # a scheduler producing NaNs gives a black image


def test_scheduler_choice_does_not_leak_into_the_next_call(engine: Engine) -> None:
    default = png(engine.generate(request())[0])
    assert png(engine.generate(request(scheduler="DDIMScheduler"))[0]) != default
    assert png(engine.generate(request())[0]) == default
    assert png(engine.generate(request(scheduler="EulerDiscreteScheduler"))[0]) == default


@pytest.mark.parametrize("name", ["NoSuchScheduler", *sorted(UNSUPPORTED)])
def test_unsupported_scheduler_is_a_value_error(engine: Engine, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        engine.generate(request(scheduler=name))
    with pytest.raises(ValueError):
        make_scheduler(name, {})


# --- progress and cancellation ------------------------------------------------------------------


def recorder(
    stop_after: int | None = None,
) -> tuple[list[tuple[int, int]], Callable[[int, int], bool]]:
    calls: list[tuple[int, int]] = []

    def on_step(done: int, total: int) -> bool:
        calls.append((done, total))
        return stop_after is None or done < stop_after

    return calls, on_step


def test_on_step_counts_every_step(engine: Engine) -> None:
    calls, on_step = recorder()
    engine.generate(request(steps=4), on_step=on_step)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_on_step_counts_only_the_steps_img2img_runs(engine: Engine) -> None:
    calls, on_step = recorder()
    engine.generate(
        request(Task.IMG2IMG, steps=4, strength=0.5), {"init": noise_image(7)}, on_step=on_step
    )
    assert calls == [(1, 2), (2, 2)]


def test_returning_false_cancels(engine: Engine) -> None:
    calls, on_step = recorder(stop_after=2)
    with pytest.raises(GenerationCancelled):
        engine.generate(request(steps=4), on_step=on_step)
    assert calls == [(1, 4), (2, 4)]
    # The engine is still usable, and the interrupt did not stick to the pipeline.
    calls, on_step = recorder()
    assert len(engine.generate(request(steps=4), on_step=on_step)) == 1
    assert calls[-1] == (4, 4)


def test_unreachable_hub_model_is_a_configuration_error(tmp_path: Path) -> None:
    # tests/conftest.py sets HF_HUB_OFFLINE=1: the hub is never contacted, as on a machine
    # without internet, and the answer comes at once instead of after minutes of retries.
    with pytest.raises(ConfigurationError, match=r"no-such-model.*hub cannot be reached"):
        Engine("sdapi-tests/no-such-model", tmp_path).load()
