"""LoRAs, textual-inversion embeddings and clip_skip on the real pipelines (tiny models, CPU).

The LoRA and embedding files are made here: PEFT LoRA layers with random (non-zero) weights on
the tiny models' UNet/transformer and text encoder, saved with diffusers' own `save_lora_weights`
(and once converted to the kohya format most published LoRAs use); embeddings are random vectors
in the diffusers, A1111 and SDXL layouts. What matters is that every request sees exactly its own
adapters: each test compares against images made without them, before and after.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdapi.catalog.builtins import TINY_MODEL_ID
from sdapi.catalog.families import SD, SD3, SDXL
from sdapi.engine import adapter_loader
from sdapi.engine.engine import Engine
from sdapi.jobs import GenerationRequest, Task
from tests.integration.conftest import MODELS
from tests.integration.test_engine import noise_image, png, request

pytestmark = [
    pytest.mark.engine,
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]

#: Attention projections: where LoRAs usually go.
DENOISER_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TRIGGER = "a photo of sdapiemb"


# --- making the files ----------------------------------------------------------------------------


def make_lora(
    model_folder: Path,
    family: str,
    dest: Path,
    seed: int,
    rank: int = 4,
    text_encoder: bool = False,
) -> Path:
    """A LoRA for a tiny model: random low-rank layers on its denoiser (and text encoder)."""
    from diffusers import (
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    def config(targets: list[str]) -> LoraConfig:
        # Random B as well as A, so the LoRA really changes the output from the start.
        return LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)

    torch.manual_seed(seed)
    layers: dict[str, dict[str, torch.Tensor]] = {}
    if family == SD3:
        denoiser = SD3Transformer2DModel.from_pretrained(model_folder, subfolder="transformer")
        denoiser.add_adapter(config(DENOISER_TARGETS))
        layers["transformer_lora_layers"] = get_peft_model_state_dict(denoiser)
    else:
        denoiser = UNet2DConditionModel.from_pretrained(model_folder, subfolder="unet")
        denoiser.add_adapter(config(DENOISER_TARGETS))
        layers["unet_lora_layers"] = get_peft_model_state_dict(denoiser)
    if text_encoder:
        layers["text_encoder_lora_layers"] = text_encoder_lora(model_folder, config(TEXT_TARGETS))
    saver = {SD: StableDiffusionPipeline, SDXL: StableDiffusionXLPipeline}.get(
        family, StableDiffusion3Pipeline
    )
    saver.save_lora_weights(dest.parent, weight_name=dest.name, **layers)
    return dest


def text_encoder_lora(model_folder: Path, config: object) -> dict[str, torch.Tensor]:
    from peft import inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel

    encoder = CLIPTextModel.from_pretrained(model_folder, subfolder="text_encoder")
    # PEFT's own call: transformers' add_adapter wants a newer PEFT than is published.
    inject_adapter_in_model(config, encoder, "default")
    return get_peft_model_state_dict(encoder)


def make_embedding(dest: Path, seed: int, vectors: int = 1, layout: str = "diffusers") -> Path:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(vectors, 32, generator=generator)
    tensors = {
        "diffusers": {dest.stem: values},
        "a1111": {"emb_params": values},
        "sdxl": {"clip_l": values, "clip_g": torch.randn(vectors, 32, generator=generator)},
    }[layout]
    save_file(tensors, dest)
    return dest


@pytest.fixture(scope="session")
def adapter_files(engine: Engine, models_dir: Path) -> Path:
    """LoRAs and embeddings for the tiny SD model, installed in the session's models folder."""
    tiny = models_dir / TINY_MODEL_ID
    loras = models_dir / "loras"
    loras.mkdir(exist_ok=True)
    make_lora(tiny, SD, loras / "style.safetensors", seed=1, text_encoder=True)
    make_lora(tiny, SD, loras / "detail.v2.safetensors", seed=2, rank=2)
    embeddings = models_dir / "embeddings"
    embeddings.mkdir(exist_ok=True)
    make_embedding(embeddings / "sdapiemb.safetensors", seed=3)
    make_embedding(embeddings / "sdapimulti.safetensors", seed=4, vectors=3, layout="a1111")
    return models_dir


@pytest.fixture
def gen(engine: Engine, adapter_files: Path) -> Callable[..., bytes]:
    """PNG bytes of image 0 of `request(**changes)` on the session engine."""

    def generate(**changes: object) -> bytes:
        return png(engine.generate(request(**changes))[0])

    return generate


# --- LoRAs ---------------------------------------------------------------------------------------


def test_a_lora_changes_the_image_and_leaves_no_trace(gen: Callable[..., bytes]) -> None:
    before = gen()
    with_lora = gen(loras=(("style", 1.0),))
    assert with_lora != before
    assert gen() == before  # the weights did not leak into the next request
    assert gen(loras=(("style", 1.0),)) == with_lora  # and the LoRA is still right


def test_several_loras_with_their_weights(gen: Callable[..., bytes]) -> None:
    base = gen()
    style = gen(loras=(("style", 1.0),))
    detail = gen(loras=(("detail.v2", 1.0),))
    both = gen(loras=(("style", 1.0), ("detail.v2", 1.0)))
    weighted = gen(loras=(("style", 1.0), ("detail.v2", 0.5)))
    assert len({base, style, detail, both, weighted}) == 5
    assert gen(loras=(("detail.v2", 0.5), ("style", 1.0))) == weighted  # order is irrelevant
    assert gen(loras=(("style", 1.0), ("detail.v2", 0.0))) == style  # weight 0: as if absent


def test_weight_zero_is_the_same_as_no_lora(gen: Callable[..., bytes]) -> None:
    assert gen(loras=(("style", 0.0), ("detail.v2", 0.0))) == gen()


def test_loras_apply_to_img2img(engine: Engine, adapter_files: Path) -> None:
    init = {"init": noise_image(11)}
    plain = png(engine.generate(request(Task.IMG2IMG), init)[0])
    styled = png(engine.generate(request(Task.IMG2IMG, loras=(("style", 1.0),)), init)[0])
    assert styled != plain
    assert png(engine.generate(request(Task.IMG2IMG), init)[0]) == plain


def test_loaded_loras_are_kept_and_reused(
    gen: Callable[..., bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    gen(loras=(("style", 1.0), ("detail.v2", 1.0)))  # both loaded, whatever ran before
    loads: list[str] = []
    real_load = adapter_loader._load_lora
    monkeypatch.setattr(
        adapter_loader, "_load_lora", lambda *a: loads.append(a[3]) or real_load(*a)
    )
    gen(loras=(("style", 1.0),))
    gen()
    gen(loras=(("detail.v2", 0.3),))
    gen(loras=(("style", 0.7), ("detail.v2", 1.0)))
    assert loads == []


def test_a_changed_file_is_loaded_again(
    engine: Engine, adapter_files: Path, gen: Callable[..., bytes]
) -> None:
    loras = adapter_files / "loras"
    shutil.copy(loras / "style.safetensors", loras / "swap.safetensors")
    first = gen(loras=(("swap", 1.0),))
    assert first == gen(loras=(("style", 1.0),))
    shutil.copy(loras / "detail.v2.safetensors", loras / "swap.safetensors")
    assert gen(loras=(("swap", 1.0),)) == gen(loras=(("detail.v2", 1.0),))


def test_least_recently_used_loras_are_dropped(
    engine: Engine, adapter_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    style_image = png(engine.generate(request(loras=(("style", 1.0),)))[0])
    monkeypatch.setattr(engine._adapters, "max_loaded", 1)
    engine.generate(request(loras=(("detail.v2", 1.0),)))
    assert engine._adapters.loaded_loras == ["detail.v2"]
    assert png(engine.generate(request(loras=(("style", 1.0),)))[0]) == style_image
    assert engine._adapters.loaded_loras == ["style"]


def test_a_kohya_format_lora_gives_the_same_image(
    adapter_files: Path, gen: Callable[..., bytes]
) -> None:
    from diffusers.utils import convert_state_dict_to_kohya

    loras = adapter_files / "loras"
    peft = load_file(loras / "detail.v2.safetensors")
    save_file(convert_state_dict_to_kohya(peft), loras / "kohya.safetensors")
    assert gen(loras=(("kohya", 1.0),)) == gen(loras=(("detail.v2", 1.0),))


def test_a_missing_lora_is_a_value_error(gen: Callable[..., bytes]) -> None:
    with pytest.raises(ValueError, match="LoRA 'nope' is not installed"):
        gen(loras=(("nope", 1.0),))
    with pytest.raises(ValueError, match="not a valid"):
        gen(loras=(("../style", 1.0),))


def test_a_lora_for_another_model_is_refused_cleanly(
    adapter_files: Path, gen: Callable[..., bytes]
) -> None:
    before = gen()
    loras = adapter_files / "loras"
    tensors = load_file(loras / "style.safetensors")
    key = next(k for k in tensors if k.startswith("unet.") and "lora_A" in k)
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 8)
    save_file(tensors, loras / "misfit.safetensors")
    with pytest.raises(ValueError, match="LoRA 'misfit' does not fit this model"):
        gen(loras=(("misfit", 1.0),))
    save_file({"unrelated.weight": torch.zeros(2, 2)}, loras / "empty.safetensors")
    with pytest.raises(ValueError, match="'empty'"):
        gen(loras=(("empty", 1.0),))
    assert gen() == before  # nothing of either stayed behind
    assert gen(loras=(("style", 1.0),)) != before


# --- embeddings ----------------------------------------------------------------------------------


def test_an_embedding_changes_only_prompts_that_use_it(gen: Callable[..., bytes]) -> None:
    trigger_before = gen(prompt=TRIGGER)
    other_before = gen()
    assert gen(prompt=TRIGGER, embeddings=("sdapiemb",)) != trigger_before
    assert gen(embeddings=("sdapiemb",)) == other_before  # "a photo of a cat" has no trigger
    # Unloaded with the request: the word means what it meant before.
    assert gen(prompt=TRIGGER) == trigger_before


def test_embedding_layouts_and_several_at_once(gen: Callable[..., bytes]) -> None:
    prompt = "sdapimulti, a photo of sdapiemb"
    plain = gen(prompt=prompt)
    one = gen(prompt=prompt, embeddings=("sdapiemb",))
    multi = gen(prompt=prompt, embeddings=("sdapimulti",))  # A1111 file, 3 vectors
    both = gen(prompt=prompt, embeddings=("sdapiemb", "sdapimulti"))
    assert len({plain, one, multi, both}) == 4
    assert gen(prompt=prompt, embeddings=("sdapimulti", "sdapiemb")) == both
    assert gen(prompt=prompt) == plain


def test_embeddings_and_loras_together(gen: Callable[..., bytes]) -> None:
    plain = gen(prompt=TRIGGER)
    combined = gen(prompt=TRIGGER, embeddings=("sdapiemb",), loras=(("style", 1.0),))
    assert combined not in {plain, gen(prompt=TRIGGER, loras=(("style", 1.0),))}
    assert gen(prompt=TRIGGER) == plain


def test_bad_embedding_files_are_refused_cleanly(
    adapter_files: Path, gen: Callable[..., bytes]
) -> None:
    before = gen(prompt=TRIGGER)
    folder = adapter_files / "embeddings"
    save_file({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, folder / "two.safetensors")
    save_file({"x": torch.zeros(1, 64)}, folder / "wide.safetensors")
    (folder / "junk.safetensors").write_bytes(b"not a safetensors file")
    for name, message in [("two", "holds 2 tensors"), ("wide", "does not fit"), ("junk", "read")]:
        with pytest.raises(ValueError, match=message):
            gen(prompt=TRIGGER, embeddings=("sdapiemb", name))
    with pytest.raises(ValueError, match="not installed"):
        gen(embeddings=("nope",))
    assert gen(prompt=TRIGGER) == before


# --- clip_skip -----------------------------------------------------------------------------------


def test_clip_skip_changes_the_image_deterministically(gen: Callable[..., bytes]) -> None:
    base = gen()
    assert gen(clip_skip=1) == base  # the wire's default: the last layer
    skip2, skip3 = gen(clip_skip=2), gen(clip_skip=3)
    assert len({base, skip2, skip3}) == 3
    assert gen(clip_skip=2) == skip2
    assert gen() == base


def test_clip_skip_deeper_than_the_encoder_is_a_value_error(gen: Callable[..., bytes]) -> None:
    # The tiny text encoder has 2 layers: the wire's 3 reads the token embeddings themselves.
    with pytest.raises(ValueError, match="clip_skip 4 is too deep"):
        gen(clip_skip=4)
    with pytest.raises(ValueError, match="between 1 and 8"):
        gen(clip_skip=9)


def test_clip_skip_with_a_text_encoder_lora(gen: Callable[..., bytes]) -> None:
    lora = gen(loras=(("style", 1.0),))
    both = gen(loras=(("style", 1.0),), clip_skip=2)
    assert both not in {lora, gen(clip_skip=2)}


# --- the other families --------------------------------------------------------------------------


def family_request(family: str, **changes: object) -> GenerationRequest:
    return request(model=MODELS[family], width=64, height=64, **changes)


@pytest.mark.parametrize("family", [SDXL, SD3])
def test_every_family_takes_loras_and_clip_skip(
    family: str, engines: dict[str, Engine], models_dir: Path
) -> None:
    engine = engines[family]
    name = f"tiny-{family}"
    make_lora(models_dir / MODELS[family], family, models_dir / "loras" / f"{name}.safetensors", 5)

    def gen(**changes: object) -> bytes:
        return png(engine.generate(family_request(family, **changes))[0])

    base = gen()
    styled = gen(loras=((name, 1.0),))
    skipped = gen(clip_skip=2)
    assert len({base, styled, skipped}) == 3
    assert gen(clip_skip=2) == skipped
    assert gen() == base
    with pytest.raises(ValueError, match="too deep"):
        gen(clip_skip=3)  # SDXL and SD3 already start from the penultimate layer


def test_sdxl_embeddings_have_a_vector_per_text_encoder(
    engines: dict[str, Engine], models_dir: Path
) -> None:
    engine = engines[SDXL]
    folder = models_dir / "embeddings"
    folder.mkdir(exist_ok=True)
    make_embedding(folder / "sdapixl.safetensors", seed=6, layout="sdxl")

    def gen(**changes: object) -> bytes:
        return png(engine.generate(family_request(SDXL, prompt="a sdapixl cat", **changes))[0])

    before = gen()
    assert gen(embeddings=("sdapixl",)) != before
    assert gen() == before
    make_embedding(folder / "sdapisd1.safetensors", seed=7)
    with pytest.raises(ValueError, match="not an SDXL embedding"):
        gen(embeddings=("sdapisd1",))
    # Fits the first text encoder, not the second: what reached the first is removed again.
    half = {"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 64)}
    save_file(half, folder / "sdapihalf.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        gen(embeddings=("sdapihalf",))
    assert "sdapihalf" not in engine._pipes[Task.TEXT2IMG].tokenizer.get_vocab()
    assert gen() == before


def test_sd3_refuses_embeddings(engines: dict[str, Engine], adapter_files: Path) -> None:
    with pytest.raises(ValueError, match="sd3 models do not take"):
        engines[SD3].generate(family_request(SD3, embeddings=("sdapiemb",)))


def test_a_fresh_state_after_unload(engine: Engine, adapter_files: Path) -> None:
    """Unloading the model drops the adapters with it: the state starts over on reload."""
    other = Engine(TINY_MODEL_ID, adapter_files)
    styled = png(other.generate(request(loras=(("style", 1.0),)))[0])
    other.unload()
    assert other._adapters.loaded_loras == []
    assert png(other.generate(request(loras=(("style", 1.0),)))[0]) == styled
    assert png(other.generate(request())[0]) == png(engine.generate(request())[0])
