"""The GPU settings and --compile (sdapi.engine.speed), on the tiny models and the CPU.

No GPU here: what a GPU changes is checked by telling the functions the device is "cuda" while
the tensors stay on the CPU (layouts, flags, dtypes all exist there too); --compile runs for
real on the CPU, where torch's inductor compiles C++ instead of CUDA kernels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdapi.catalog.builtins import TINY_MODEL_ID, TINY_SDXL_MODEL_ID
from sdapi.engine import speed
from sdapi.engine.engine import Engine
from sdapi.engine.models import load_pipeline
from tests.integration.test_engine import request

pytestmark = pytest.mark.engine


def test_weights_are_fp32_on_a_cpu_and_half_precision_on_a_gpu() -> None:
    assert speed.dtype_for("cpu", "sd") == torch.float32
    assert speed.dtype_for("cuda", "sdxl") == torch.float16
    assert speed.dtype_for("cuda:1", None) == torch.float16


def test_a_cpu_pipeline_is_left_as_diffusers_built_it(models_dir: Path) -> None:
    pipe = load_pipeline(TINY_MODEL_ID, models_dir, "cpu")
    speed.tune(pipe, "cpu")
    assert pipe.unet.dtype == torch.float32
    assert not pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not pipe.vae.use_slicing
    assert not speed.tiles_for(pipe, "cpu", 4096, 4096)


def test_on_a_gpu_the_unet_is_channels_last_and_the_vae_slices(models_dir: Path) -> None:
    pipe = load_pipeline(TINY_MODEL_ID, models_dir, "cpu")
    speed.tune(pipe, "cuda")
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.use_slicing
    assert not speed.tiles_for(pipe, "cuda", 1024, 1024)
    assert speed.tiles_for(pipe, "cuda", 2048, 2048) and pipe.vae.use_tiling
    assert not speed.tiles_for(pipe, "cuda", 512, 512) and not pipe.vae.use_tiling


def test_an_fp16_sdxl_vae_that_overflows_is_held_in_fp32(models_dir: Path) -> None:
    from diffusers import AutoPipelineForImage2Image, StableDiffusionXLPipeline

    from sdapi.engine.models import resolve_model_source

    folder = resolve_model_source(TINY_SDXL_MODEL_ID, models_dir)
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, dtype=torch.float16)
    pipe.vae.register_to_config(force_upcast=True)  # as SDXL's own VAE says
    speed.keep_vae_in_fp32(pipe.vae)
    assert (pipe.vae.dtype, pipe.unet.dtype) == (torch.float32, torch.float16)
    assert not pipe.vae.config.force_upcast  # the pipeline no longer moves it back and forth
    made = pipe(prompt="a", width=64, height=64, num_inference_steps=2, output_type="np").images
    assert np.isfinite(made).all()
    redrawn = AutoPipelineForImage2Image.from_pipe(pipe)(  # the encoder takes fp16 input too
        prompt="a", image=Image.new("RGB", (64, 64), "gray"), strength=0.5, num_inference_steps=2
    ).images[0]
    assert redrawn.size == (64, 64) and pipe.vae.dtype == torch.float32


def test_compile_is_warmed_at_load_and_never_recompiles(models_dir: Path) -> None:
    """The first job after load, other call sizes, image sizes and step counts: all run on
    the graph the warm-up compiled (dynamic shapes), none compiles again."""
    from torch._dynamo.utils import counters

    engine = Engine(TINY_MODEL_ID, models_dir, compile=True)
    engine.load()
    compiled = counters["stats"]["unique_graphs"]
    assert compiled >= 1, "the warm-up compiled the UNet"
    plain = Engine(TINY_MODEL_ID, models_dir)
    for changes in ({}, {"samples": 2}, {"width": 128, "height": 128}, {"steps": 5}):
        made = engine.generate(request(**changes))
        assert counters["stats"]["unique_graphs"] == compiled, f"recompiled for {changes}"
        assert len(made) == changes.get("samples", 1)
    # Compiled kernels round differently; the picture is the same one.
    a = np.asarray(engine.generate(request(seed=3))[0], dtype=np.int16)
    b = np.asarray(plain.generate(request(seed=3))[0], dtype=np.int16)
    assert np.abs(a - b).max() <= 8
