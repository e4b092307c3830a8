"""Decoding with an installed VAE (the wire's `vae`) on the real pipelines (tiny models, CPU).

The VAEs are tiny AutoencoderKLs made here with other seeds (and scalings), installed in a models
folder of their own: as diffusers folders (`vae/org/name/`) and as single files in the original
(A1111) key layout. `generate` does what the engine does with a request's `vae`: it derives the
task's pipeline first, then swaps the VAE in around the call. What matters is that the swapped VAE
really decodes, and that nothing of it is left afterwards.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdapi.catalog.builtins import TINY_SD3_MODEL_ID
from sdapi.catalog.families import SD, SD3
from sdapi.catalog.vaes import VAE_DIR, check_vae, installed_vaes
from sdapi.engine import tiny
from sdapi.engine.engine import Engine, GenerationCancelled
from sdapi.engine.vae_loader import Vaes, swapped_vae
from sdapi.jobs import Task
from tests.integration.ldm_layout import vae_state
from tests.integration.test_engine import center_mask, noise_image, png, request

pytestmark = [
    pytest.mark.engine,
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]

#: The SD3 tiny VAE's config (sdapi.engine.tiny._tiny_sd3_pipeline).
SD3_VAE = {
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "shift_factor": 0.0609,
    "scaling_factor": 1.5035,
}


def make_vae(seed: int, **config: Any) -> Any:
    """A tiny AutoencoderKL like the built-in models' (scale factor 8), other weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tiny._vae(**config)


def save_single_file(vae: Any, path: Path, prefix: str = "") -> Path:
    """`vae` as one safetensors file in the original layout (A1111 files have no prefix)."""
    state = {
        prefix + name.removeprefix("first_stage_model."): tensor
        for name, tensor in vae_state(vae).items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding only VAEs (the engine's own models folder stays as it is)."""
    root = tmp_path_factory.mktemp("vae-models")
    vae = root / VAE_DIR
    make_vae(7, scaling_factor=0.25).save_pretrained(vae / "org" / "name")
    same = make_vae(8)  # the model's VAE config (scaling 0.18215), other weights
    same.save_pretrained(vae / "org" / "same")
    save_single_file(same, vae / "same-a1111.safetensors")
    save_single_file(same, vae / "same-whole.safetensors", prefix="first_stage_model.")
    save_file(same.state_dict(), str(vae / "same-diffusers.safetensors"))
    make_vae(9, **SD3_VAE).save_pretrained(vae / "sd3" / "vae")
    return root


@pytest.fixture
def vaes(vae_dir: Path) -> Vaes:
    return Vaes(vae_dir)


def generate(
    engine: Engine,
    vaes: Vaes,
    name: str | None = None,
    task: Task = Task.TEXT2IMG,
    images: Mapping[str, Image.Image] | None = None,
    **changes: object,
) -> bytes:
    """PNG bytes of image 0, decoded with VAE `name` (None: the model's own).

    The task's pipeline is derived (from_pipe) before any VAE is swapped in, as the engine must:
    a pipeline derived during a swap would keep the swapped VAE for good.
    """
    if task not in engine._pipes:
        engine.generate(request(task, **changes), images)
    pipe = engine._pipes[task]
    with vaes.using(pipe, name):
        return png(engine.generate(request(task, **changes), images)[0])


@pytest.fixture(scope="module")
def plain(engine: Engine) -> bytes:
    """The model's own image for `request()`."""
    return png(engine.generate(request())[0])


@pytest.fixture(scope="module")
def swapped(engine: Engine, vae_dir: Path) -> bytes:
    """The same request's image decoded with VAE "org/name"."""
    return generate(engine, Vaes(vae_dir), "org/name")


def same_weights(one: Any, other: Any) -> bool:
    ours, theirs = one.state_dict(), other.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# --- folders -------------------------------------------------------------------------------------


def test_a_vae_folder_changes_the_image_and_leaves_no_trace(
    engine: Engine, vaes: Vaes, plain: bytes, swapped: bytes
) -> None:
    pipe = engine._pipes[Task.TEXT2IMG]
    own = pipe.vae
    assert swapped != plain
    assert generate(engine, vaes, "org/name") == swapped  # loaded anew: the same bytes
    assert vaes.loaded == ["org/name"]
    assert pipe.vae is own
    assert generate(engine, vaes) == plain  # exactly the model's own bytes again


def test_the_model_vae_is_back_after_an_exception(engine: Engine, vaes: Vaes, plain: bytes) -> None:
    pipe = engine._pipes[Task.TEXT2IMG]
    own = pipe.vae
    with pytest.raises(GenerationCancelled), vaes.using(pipe, "org/name"):
        engine.generate(request(), on_step=lambda done, total: False)
    assert pipe.vae is own
    with pytest.raises(RuntimeError, match="boom"), swapped_vae(pipe, vaes.get("org/name", own)):
        assert pipe.vae is not own
        raise RuntimeError("boom")
    assert pipe.vae is own
    assert generate(engine, vaes) == plain


def test_img2img_and_inpaint_pipelines_swap_their_own_vae(engine: Engine, vaes: Vaes) -> None:
    init = {"init": noise_image(21), "mask": center_mask()}
    text2img = engine._pipes[Task.TEXT2IMG]
    for task in (Task.IMG2IMG, Task.INPAINT):
        before = generate(engine, vaes, task=task, images=init)  # derives the pipeline
        pipe = engine._pipes[task]
        with vaes.using(pipe, "org/name"):
            assert pipe.vae is not text2img.vae  # the text2img pipeline keeps its own meanwhile
            assert png(engine.generate(request(task), init)[0]) != before
        assert pipe.vae is text2img.vae
        assert generate(engine, vaes, task=task, images=init) == before


def test_a_changed_folder_is_loaded_again(engine: Engine, tmp_path: Path) -> None:
    own = engine._pipes[Task.TEXT2IMG].vae
    vaes = Vaes(tmp_path)
    folder = tmp_path / VAE_DIR / "swap"
    first, second = make_vae(7), make_vae(8)
    first.save_pretrained(folder)
    assert same_weights(vaes.get("swap", own), first)
    shutil.rmtree(folder)
    second.save_pretrained(folder)
    assert same_weights(vaes.get("swap", own), second)
    assert vaes.loaded == ["swap"]


def test_least_recently_used_vaes_are_dropped(engine: Engine, vae_dir: Path) -> None:
    vaes = Vaes(vae_dir, max_loaded=1)
    own = engine._pipes[Task.TEXT2IMG].vae
    first = vaes.get("org/name", own)
    assert vaes.get("org/name", own) is first
    vaes.get("org/same", own)
    assert vaes.loaded == ["org/same"]
    assert vaes.get("org/name", own) is not first
    vaes.reset()
    assert vaes.loaded == []


def test_a_vae_follows_the_models_device_and_dtype(engine: Engine, vaes: Vaes) -> None:
    own = engine._pipes[Task.TEXT2IMG].vae
    half = copy.deepcopy(own).to(torch.float16)
    assert vaes.get("org/name", half).dtype == torch.float16
    full = vaes.get("org/name", own)
    assert full.dtype == torch.float32
    # Loaded again rather than cast back: the half-precision round trip lost digits.
    assert same_weights(full, vaes.get("org/name", own))
    assert same_weights(full, Vaes(vaes.models_dir).get("org/name", own))


# --- single files --------------------------------------------------------------------------------


def test_single_files_load_as_their_folder(engine: Engine, vaes: Vaes, plain: bytes) -> None:
    """A file takes the model's own VAE config: the same weights give the same bytes."""
    own = engine._pipes[Task.TEXT2IMG].vae
    folder = vaes.get("org/same", own)
    for name in ("same-a1111", "same-whole", "same-diffusers"):
        single = vaes.get(name, own)
        assert same_weights(single, folder), name
        assert dict(single.config) == dict(own.config), name
    image = generate(engine, vaes, "same-a1111")
    assert image != plain
    assert image == generate(engine, vaes, "org/same")


def test_a_single_file_of_another_architecture_is_refused(
    engine: Engine, vae_dir: Path, tmp_path: Path
) -> None:
    own = engine._pipes[Task.TEXT2IMG].vae
    vaes = Vaes(tmp_path)
    save_single_file(make_vae(3, **SD3_VAE), tmp_path / VAE_DIR / "sd3-file.safetensors")
    assert "16 latent channels" in str(check_vae(tmp_path, "sd3-file", SD))
    with pytest.raises(ValueError, match="VAE 'sd3-file' cannot be loaded for this model") as info:
        vaes.get("sd3-file", own)
    assert str(tmp_path) not in str(info.value)
    state = {k.removeprefix("first_stage_model."): t for k, t in vae_state(own).items()}
    del state["decoder.conv_out.bias"]
    save_file(state, str(tmp_path / VAE_DIR / "partial.safetensors"))
    assert check_vae(tmp_path, "partial", SD) is None  # the header looks right
    with pytest.raises(ValueError, match="VAE 'partial' cannot be loaded"):
        vaes.get("partial", own)
    assert vaes.loaded == []


# --- what does not fit ---------------------------------------------------------------------------


def test_an_sd3_vae_is_refused_for_sd(engine: Engine, vae_dir: Path, vaes: Vaes) -> None:
    pipe = engine._pipes[Task.TEXT2IMG]
    own = pipe.vae
    assert check_vae(vae_dir, "sd3/vae", SD) == (
        "VAE 'sd3/vae' has 16 latent channels; sd models need a VAE with 4"
    )
    with pytest.raises(ValueError, match="VAE 'sd3/vae' has 16 latent channels; this model's"):
        vaes.get("sd3/vae", own)
    with (
        pytest.raises(ValueError, match="16 latent channels"),
        swapped_vae(pipe, make_vae(9, **SD3_VAE)),
    ):
        pass
    assert pipe.vae is own


def test_another_scale_factor_is_refused(engine: Engine, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    three_blocks = AutoencoderKL(
        block_out_channels=[32, 32, 64],
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        layers_per_block=1,
    )
    three_blocks.save_pretrained(tmp_path / VAE_DIR / "x4")
    pipe = engine._pipes[Task.TEXT2IMG]
    assert "shrinks images 4 times" in str(check_vae(tmp_path, "x4", SD))
    with pytest.raises(ValueError, match="shrinks images 4 times; this model's VAE shrinks them 8"):
        Vaes(tmp_path).get("x4", pipe.vae)


def test_other_classes_and_pickles_are_never_loaded(engine: Engine, tmp_path: Path) -> None:
    from diffusers import AutoencoderTiny

    own = engine._pipes[Task.TEXT2IMG].vae
    folder = tmp_path / VAE_DIR
    tiny_vae = AutoencoderTiny(
        encoder_block_out_channels=(8,),
        decoder_block_out_channels=(8,),
        num_encoder_blocks=(1,),
        num_decoder_blocks=(1,),
    )
    tiny_vae.save_pretrained(folder / "taesd")
    make_vae(4).save_pretrained(folder / "pickled", safe_serialization=False)
    vaes = Vaes(tmp_path)
    with pytest.raises(ValueError, match="'taesd' cannot be used: it is a AutoencoderTiny"):
        vaes.get("taesd", own)
    with pytest.raises(ValueError, match="'pickled' cannot be used: its folder has no"):
        vaes.get("pickled", own)
    assert vaes.loaded == []


def test_unknown_names_say_what_is_installed(engine: Engine, vae_dir: Path, vaes: Vaes) -> None:
    assert installed_vaes(vae_dir) == [
        "org/name",
        "org/same",
        "same-a1111",
        "same-diffusers",
        "same-whole",
        "sd3/vae",
    ]
    problem = str(check_vae(vae_dir, "stabilityai/sd-vae-ft-mse", SD))
    assert problem.startswith("VAE 'stabilityai/sd-vae-ft-mse' is not installed on this server")
    assert "installed: org/name, org/same," in problem
    own = engine._pipes[Task.TEXT2IMG].vae
    with pytest.raises(ValueError, match="not installed"):
        vaes.get("stabilityai/sd-vae-ft-mse", own)
    with pytest.raises(ValueError, match="not a valid VAE name"):
        vaes.get("../org/name", own)


# --- SD3 -----------------------------------------------------------------------------------------


def test_an_sd3_model_decodes_with_a_16_channel_vae(engines: dict[str, Engine], vaes: Vaes) -> None:
    engine = engines[SD3]
    changes = {"model": TINY_SD3_MODEL_ID}
    before = generate(engine, vaes, **changes)
    swapped = generate(engine, vaes, "sd3/vae", **changes)
    assert swapped != before
    assert generate(engine, vaes, **changes) == before
    assert check_vae(vaes.models_dir, "sd3/vae", SD3) is None
    with pytest.raises(ValueError, match="4 latent channels; this model's VAE has 16"):
        generate(engine, vaes, "org/name", **changes)
