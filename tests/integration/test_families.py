"""Each model family's real pipelines, with its built-in tiny model (no download, CPU only).

SD 1.x/2.x (`sdapi-tiny`), SDXL (`sdapi-tiny-sdxl`) and SD3 (`sdapi-tiny-sd3`): text2img, img2img
and inpaint through AutoPipeline + from_pipe, determinism, fixed-shape batching, and which
schedulers and scheduler options each family takes. 64 px images and 2-4 steps keep it fast.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdapi.catalog.builtins import BUILTIN_MODELS
from sdapi.catalog.families import SD, SD3, SDXL, family_of_folder
from sdapi.catalog.models import model_family
from sdapi.catalog.schedulers import supported_schedulers
from sdapi.catalog.work import batch_key
from sdapi.engine.engine import Engine
from sdapi.engine.tiny import build_tiny_model
from sdapi.jobs import GenerationRequest, Task
from tests.integration.conftest import MODELS
from tests.integration.test_engine import center_mask, noise_image, pixels, png
from tests.integration.test_engine import request as engine_request

pytestmark = [
    pytest.mark.engine,
    # diffusers' schedulers hand torch tensors to numpy; numpy 2 deprecates the protocol torch uses.
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]

FAMILIES = list(MODELS)
#: Not square, so a swapped width and height shows; 48 is a multiple of SD3's 16.
WIDTH, HEIGHT = 64, 48
ROWS = 4


def request(family: str, task: Task = Task.TEXT2IMG, **changes: object) -> GenerationRequest:
    sized = {"width": WIDTH, "height": HEIGHT, **changes}
    return engine_request(task, model=MODELS[family], **sized)


def inputs(seed: int = 1) -> dict[str, Image.Image]:
    mask = center_mask().resize((WIDTH, HEIGHT))
    return {"init": noise_image(seed, (WIDTH, HEIGHT)), "mask": mask}


def pngs(images: list[Image.Image]) -> list[bytes]:
    return [png(image) for image in images]


# --- the built-in models ----------------------------------------------------------------------


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("family", [SDXL, SD3])
def test_tiny_models_build_deterministically(
    family: str, engines: dict[str, Engine], models_dir: Path, tmp_path: Path
) -> None:
    model_id = MODELS[family]
    dest = build_tiny_model(tmp_path / model_id, model_id)
    assert digests(dest) == digests(models_dir / model_id)  # the session's independent build
    assert family_of_folder(dest) == family


def test_each_built_in_model_knows_its_family(engines: dict[str, Engine]) -> None:
    assert set(BUILTIN_MODELS) == set(MODELS.values())
    for family, engine in engines.items():
        assert engine.family == family
        assert model_family(engine.model) == family


# --- every task, every family ------------------------------------------------------------------


@pytest.mark.parametrize("task", list(Task))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_task_makes_images_of_the_asked_size(
    engines: dict[str, Engine], family: str, task: Task
) -> None:
    images = engines[family].generate(request(family, task, samples=2), inputs())
    assert [image.size for image in images] == [(WIDTH, HEIGHT)] * 2
    assert all(image.mode == "RGB" for image in images)
    assert pixels(images[0]).std() > 1  # noise from random weights, not a blank image
    assert png(images[0]) != png(images[1])  # each sample has its own seed


@pytest.mark.parametrize("family", FAMILIES)
def test_inpaint_keeps_the_unmasked_area(engines: dict[str, Engine], family: str) -> None:
    given = inputs(3)
    image = engines[family].generate(request(family, Task.INPAINT, strength=1.0), given)[0]
    keep = np.asarray(given["mask"]) == 0
    diff = np.abs(pixels(image) - pixels(given["init"]))
    assert diff[keep].max() <= 2
    assert diff[~keep].mean() > 10


@pytest.mark.parametrize("task", list(Task))
@pytest.mark.parametrize("family", [SDXL, SD3])
def test_same_request_gives_identical_bytes_in_a_fresh_engine(
    engines: dict[str, Engine], models_dir: Path, family: str, task: Task
) -> None:
    req = request(family, task)
    first = pngs(engines[family].generate(req, inputs()))
    assert pngs(engines[family].generate(req, inputs())) == first
    fresh = Engine(MODELS[family], models_dir)
    assert pngs(fresh.generate(req, inputs())) == first


@pytest.mark.parametrize("task", list(Task))
@pytest.mark.parametrize("family", FAMILIES)
def test_an_image_is_the_same_alone_or_batched(
    engines: dict[str, Engine], family: str, task: Task
) -> None:
    engine = engines[family]
    a = request(family, task, seed=5, samples=2)
    b = request(family, task, seed=6, prompt="a dog")
    batched = engine.generate_batch([a, b], [inputs(1), inputs(2)], ROWS)
    assert pngs(batched[0]) == pngs(engine.generate_batch([a], [inputs(1)], ROWS)[0])
    assert pngs(batched[1]) == pngs(engine.generate_batch([b], [inputs(2)], ROWS)[0])


@pytest.mark.parametrize(
    ("family", "scheduler", "algorithm_type"),
    [
        (SDXL, "EulerAncestralDiscreteScheduler", None),
        (SDXL, "DPMSolverMultistepScheduler", "sde-dpmsolver++"),
        (SD3, "DPMSolverMultistepScheduler", None),
    ],
)
def test_stochastic_and_flow_mode_samplers_batch_deterministically(
    engines: dict[str, Engine], family: str, scheduler: str, algorithm_type: str | None
) -> None:
    engine = engines[family]
    a = request(family, scheduler=scheduler, algorithm_type=algorithm_type, seed=7)
    b = replace(a, seed=8, prompt="a dog")
    batched = engine.generate_batch([a, b], [{}, {}], ROWS)
    assert pngs(batched[0]) == pngs(engine.generate_batch([a], [{}], ROWS)[0])
    assert pngs(batched[1]) == pngs(engine.generate_batch([b], [{}], ROWS)[0])


# --- schedulers per family ---------------------------------------------------------------------


@pytest.mark.parametrize("task", list(Task))
@pytest.mark.parametrize("family", [SDXL, SD3])
def test_every_supported_scheduler_makes_images(
    engines: dict[str, Engine], family: str, task: Task
) -> None:
    # SD's sweep is test_engine.py's test_supported_scheduler_makes_images.
    for name in sorted(supported_schedulers(family, task)):
        image = engines[family].generate(request(family, task, scheduler=name), inputs())[0]
        assert image.size == (WIDTH, HEIGHT), name
        assert pixels(image).std() > 1, name  # a scheduler producing NaNs gives a black image


@pytest.mark.parametrize(
    "name", ["DDIMScheduler", "EulerAncestralDiscreteScheduler", "LCMScheduler", "PNDMScheduler"]
)
def test_sd3_refuses_noise_prediction_schedulers(engines: dict[str, Engine], name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name}.*sd3"):
        engines[SD3].generate(request(SD3, scheduler=name))


@pytest.mark.parametrize("task", [Task.IMG2IMG, Task.INPAINT])
def test_sd3_runs_flow_mode_solvers_for_text2img_only(
    engines: dict[str, Engine], task: Task
) -> None:
    with pytest.raises(ValueError, match=r"UniPCMultistepScheduler.*only text2img on sd3"):
        engines[SD3].generate(request(SD3, task, scheduler="UniPCMultistepScheduler"), inputs())


def test_sd3_euler_and_heun_are_its_flow_matching_samplers(engines: dict[str, Engine]) -> None:
    engine = engines[SD3]
    default = png(engine.generate(request(SD3))[0])  # FlowMatchEulerDiscreteScheduler
    assert png(engine.generate(request(SD3, scheduler="EulerDiscreteScheduler"))[0]) == default
    assert png(engine.generate(request(SD3, scheduler="HeunDiscreteScheduler"))[0]) != default
    assert png(engine.generate(request(SD3))[0]) == default  # nothing leaked into the next call


def test_sd3_needs_sizes_in_multiples_of_16(engines: dict[str, Engine]) -> None:
    with pytest.raises(ValueError, match=r"sd3 models need .*multiples of 16.*64x40"):
        engines[SD3].generate(request(SD3, height=40))
    assert engines[SDXL].generate(request(SDXL, height=40))[0].size == (WIDTH, 40)


# --- scheduler options -------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(Task))
@pytest.mark.parametrize(
    ("family", "scheduler"),
    [
        (SD, "EulerDiscreteScheduler"),
        (SD, "DPMSolverMultistepScheduler"),
        (SDXL, "KDPM2DiscreteScheduler"),
        (SD3, None),  # the model's default: FlowMatchEulerDiscreteScheduler
        (SD3, "EulerDiscreteScheduler"),
    ],
)
def test_karras_sigmas_change_the_images(
    engines: dict[str, Engine], family: str, scheduler: str | None, task: Task
) -> None:
    engine = engines[family]
    plain = request(family, task, scheduler=scheduler, steps=4)
    karras = replace(plain, use_karras_sigmas=True)
    assert batch_key(karras) != batch_key(plain)
    images = engine.generate(karras, inputs())
    assert pixels(images[0]).std() > 1
    assert png(images[0]) != png(engine.generate(plain, inputs())[0])
    assert pngs(engine.generate(karras, inputs())) == pngs(images)  # still deterministic


@pytest.mark.parametrize("algorithm_type", ["dpmsolver", "sde-dpmsolver", "sde-dpmsolver++"])
@pytest.mark.parametrize("family", [SD, SDXL])
def test_algorithm_type_changes_the_images(
    engines: dict[str, Engine], family: str, algorithm_type: str
) -> None:
    engine = engines[family]
    plain = request(family, scheduler="DPMSolverMultistepScheduler", steps=4)
    other = replace(plain, algorithm_type=algorithm_type)
    images = engine.generate(other, {})
    assert pixels(images[0]).std() > 1
    assert png(images[0]) != png(engine.generate(plain, {})[0])
    assert pngs(engine.generate(other, {})) == pngs(images)
    # dpmsolver++ is the class default: naming it changes nothing.
    same = replace(plain, algorithm_type="dpmsolver++")
    assert pngs(engine.generate(same, {})) == pngs(engine.generate(plain, {}))


def test_singlestep_takes_its_own_algorithm_types(engines: dict[str, Engine]) -> None:
    req = request(SD, scheduler="DPMSolverSinglestepScheduler", algorithm_type="dpmsolver")
    assert pixels(engines[SD].generate(req)[0]).std() > 1
    with pytest.raises(ValueError, match=r"DPMSolverSinglestepScheduler.*'sde-dpmsolver'"):
        engines[SD].generate(replace(req, algorithm_type="sde-dpmsolver"))


@pytest.mark.parametrize(
    ("family", "changes", "message"),
    [
        (SD, {"scheduler": "DDIMScheduler", "use_karras_sigmas": True}, r"karras.*DDIMScheduler"),
        (SDXL, {"scheduler": "LCMScheduler", "use_karras_sigmas": True}, r"karras.*LCMScheduler"),
        (SD3, {"scheduler": "HeunDiscreteScheduler", "use_karras_sigmas": True}, r"Heun.*sd3"),
        (
            SD3,
            {"scheduler": "DPMSolverMultistepScheduler", "use_karras_sigmas": True},
            r"karras.*DPMSolverMultistepScheduler.*sd3",
        ),
        (
            SD,
            {"scheduler": "EulerDiscreteScheduler", "algorithm_type": "dpmsolver++"},
            r"algorithm_type .*EulerDiscreteScheduler",
        ),
        (SD, {"algorithm_type": "dpmsolver++"}, r"EulerDiscreteScheduler"),  # the default
        (
            SDXL,
            {"scheduler": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver+++"},
            r"'dpmsolver\+\+\+' is unknown \(did you mean 'dpmsolver\+\+'\?\)",
        ),
        (
            SD3,
            {"scheduler": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"},
            r"DPMSolverMultistepScheduler.*'sde-dpmsolver\+\+' on sd3",
        ),
    ],
)
def test_inapplicable_options_are_value_errors(
    engines: dict[str, Engine], family: str, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        engines[family].generate(request(family, **changes))
