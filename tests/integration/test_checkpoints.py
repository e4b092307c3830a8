"""Single-file checkpoints: a model in one .safetensors file in the original (LDM) layout, loaded
offline through the registry, makes exactly the images of the diffusers folder it was made from.

The files are made here from the tiny models (tests/integration/ldm_layout.py). The SDXL one is
a variant of `sdapi-tiny-sdxl` whose two text encoders differ in width: diffusers tells the two
encoders of a checkpoint apart by their width, as real SDXL's (768 and 1280) do, and the
built-in model's are both 32 wide.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sdapi.catalog.builtins import TINY_MODEL_ID, TINY_SDXL_MODEL_ID
from sdapi.catalog.checkpoints import checkpoint_family, checkpoint_kind, tensor_names
from sdapi.catalog.families import SD, SDXL
from sdapi.catalog.models import check_model_ref, model_family
from sdapi.catalog.registry import MODELS_FILE_ENV, ModelEntry, Registry
from sdapi.engine.engine import Engine
from sdapi.engine.tiny import build_tiny_model
from sdapi.errors import ConfigurationError
from sdapi.jobs import Task
from tests.integration.ldm_layout import save_checkpoint
from tests.integration.test_engine import noise_image, png, request

pytestmark = [
    pytest.mark.engine,
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]


def _pipeline(folder: Path) -> object:
    from diffusers import AutoPipelineForText2Image

    return AutoPipelineForText2Image.from_pretrained(folder)


@pytest.fixture(scope="session")
def sd_checkpoint(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_tiny_model(models_dir / TINY_MODEL_ID, TINY_MODEL_ID)
    dest = tmp_path_factory.mktemp("checkpoints") / "tiny-sd.safetensors"
    return save_checkpoint(_pipeline(folder), dest)


@pytest.fixture(scope="session")
def sdxl_folder(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`sdapi-tiny-sdxl` with a 48-wide second text encoder (and a UNet sized to match)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    pipe = _pipeline(build_tiny_model(models_dir / TINY_SDXL_MODEL_ID, TINY_SDXL_MODEL_ID))
    wide = {**pipe.text_encoder_2.config.to_dict(), "hidden_size": 48, "projection_dim": 48}
    unet = {**pipe.unet.config, "cross_attention_dim": 32 + 48}
    unet["projection_class_embeddings_input_dim"] = 6 * 8 + 48
    torch.manual_seed(0)
    pipe.text_encoder_2 = CLIPTextModelWithProjection(type(pipe.text_encoder_2.config)(**wide))
    pipe.unet = UNet2DConditionModel.from_config(unet)
    pipe.register_modules(text_encoder_2=pipe.text_encoder_2, unet=pipe.unet)
    folder = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl-wide"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sdxl_checkpoint(sdxl_folder: Path) -> Path:
    return save_checkpoint(_pipeline(sdxl_folder), sdxl_folder.parent / "tiny-sdxl.safetensors")


def _use_registry(monkeypatch: pytest.MonkeyPatch, path: Path, *entries: ModelEntry) -> Registry:
    """A registry file that Engines find the way workers do: through $SDAPI_MODELS_FILE."""
    registry = Registry(entries, path)
    registry.save()
    monkeypatch.setenv(MODELS_FILE_ENV, str(path))
    return registry


def test_the_files_tell_their_family(sd_checkpoint: Path, sdxl_checkpoint: Path) -> None:
    assert checkpoint_kind(tensor_names(sd_checkpoint)) == "v1"
    assert checkpoint_family(sd_checkpoint) == SD
    assert checkpoint_family(sdxl_checkpoint) == SDXL
    assert model_family(str(sd_checkpoint)) == SD  # a bare path, no registry


def test_sd_checkpoint_makes_the_images_of_its_folder(
    sd_checkpoint: Path,
    engine: Engine,
    models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = ModelEntry("tiny-ckpt", str(sd_checkpoint), config=TINY_MODEL_ID)
    _use_registry(monkeypatch, tmp_path / "models.toml", entry)
    single = Engine("tiny-ckpt", models_dir)  # loaded by its registry id, as a worker does
    assert png(single.generate(request())[0]) == png(engine.generate(request())[0])
    assert single.family == SD
    init = {"init": noise_image(7)}
    img2img = request(Task.IMG2IMG, init_image="init")
    assert png(single.generate(img2img, init)[0]) == png(engine.generate(img2img, init)[0])


def test_sdxl_checkpoint_makes_the_images_of_its_folder(
    sdxl_folder: Path,
    sdxl_checkpoint: Path,
    models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = ModelEntry("xl-ckpt", str(sdxl_checkpoint), config=str(sdxl_folder))
    _use_registry(monkeypatch, tmp_path / "models.toml", entry)
    assert model_family("xl-ckpt", models_dir) == SDXL
    single = Engine("xl-ckpt", models_dir)
    folder = Engine(str(sdxl_folder), models_dir)
    ask = request(model="xl-ckpt")
    assert png(single.generate(ask)[0]) == png(folder.generate(ask)[0])
    assert single.family == SDXL


def test_checkpoint_without_reachable_configs_is_refused_offline(
    sd_checkpoint: Path, models_dir: Path
) -> None:
    # Without `config`, an SD 1.x file needs SD 1.5's configs in the hub cache: never fetched.
    with pytest.raises(ConfigurationError, match=r"stable-diffusion-v1-5.*never downloads"):
        check_model_ref(str(sd_checkpoint), Registry(), models_dir)
    with pytest.raises(ConfigurationError, match="never downloads"):
        Engine(str(sd_checkpoint), models_dir).load()
    # A cached snapshot of it is enough (here: the tiny model's folder standing in for it).
    snapshot = models_dir / "hub" / "models--stable-diffusion-v1-5--stable-diffusion-v1-5"
    tiny = build_tiny_model(models_dir / TINY_MODEL_ID, TINY_MODEL_ID)
    (snapshot / "snapshots").mkdir(parents=True, exist_ok=True)
    link = snapshot / "snapshots" / "0123abcd"
    if not link.exists():
        link.symlink_to(tiny, target_is_directory=True)
    try:
        assert check_model_ref(str(sd_checkpoint), Registry(), models_dir) == str(sd_checkpoint)
    finally:
        link.unlink()


def test_broken_and_pickle_checkpoints_are_configuration_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ConfigurationError, match="not a safetensors file"):
        check_model_ref(str(broken), Registry())
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(ConfigurationError, match="can run code"):
        check_model_ref(str(pickle), Registry())
    with pytest.raises(ConfigurationError, match="cannot tell the family"):
        unknown = tmp_path / "unknown.safetensors"
        unknown.write_bytes(_header_only({"some.tensor": {"dtype": "F32", "shape": [1]}}))
        check_model_ref(str(unknown), Registry())


def _header_only(tensors: dict[str, dict[str, object]]) -> bytes:
    import json

    offset, header = 0, {}
    for name, info in tensors.items():
        header[name] = {**info, "data_offsets": [offset, offset + 4]}
        offset += 4
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + bytes(offset)
