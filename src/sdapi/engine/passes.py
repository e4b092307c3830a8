"""Two-pass generation: `highres_fix` and `upscale` (spec sections 3 and 9).

Both end the same way, as A1111's "hires fix" does: the first pass's images are enlarged with
Lanczos to the output size and redrawn there by an img2img pass of the same model at
`REFINE_STRENGTH`, so the added pixels get real detail instead of interpolation.

- `highres_fix`: a model draws well only near its native size (512 px for SD 1.x, 1024 px for
  SDXL and SD3); asked for more, it repeats subjects and loses the composition. So the first
  pass runs at the native area (the request's aspect ratio kept) and the second at the
  requested size. A request no larger than the native area needs no fix: one pass.
- `upscale` (1-3): the output's sides are the request's times the factor; the first pass runs
  at the requested size.

This module does the arithmetic of sizes and makes the second pass's request; the engine runs
the passes.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from sdapi.catalog.options import OPTIONS
from sdapi.catalog.work import REFINE_STRENGTH
from sdapi.jobs import GenerationRequest, Task

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: Sizes are multiples of this (the VAE's factor of every family sdapi serves).
SIZE_STEP = 8
#: The smallest first pass (a side), whatever the aspect ratio.
MIN_SIDE = 64
#: The wire's `upscale` factors ("yes" is 2, as the v3 docs' "512 -> 1024").
MAX_UPSCALE = 3


def native_size(pipe: DiffusionPipeline) -> int:
    """The side in pixels a pipeline's model was trained at (its default output size)."""
    latent = getattr(pipe, "default_sample_size", None)  # SDXL, SD3
    if latent is None:  # SD 1.x/2.x: the UNet's
        latent = pipe.unet.config.sample_size
    return int(latent) * int(pipe.vae_scale_factor)


def first_pass_size(request: GenerationRequest, native: int) -> tuple[int, int]:
    """The first pass's size: the native area in the request's aspect ratio with `highres_fix`
    when the request is larger than that, else the requested size."""
    width, height = request.width, request.height
    if not request.highres_fix or width * height <= native * native:
        return width, height
    shrink = math.sqrt(native * native / (width * height))
    return _side(width * shrink), _side(height * shrink)


def _side(length: float) -> int:
    return max(MIN_SIDE, int(length) // SIZE_STEP * SIZE_STEP)


def refining(request: GenerationRequest) -> GenerationRequest:
    """The second pass of a two-pass request: img2img at the output size, without the options
    that only the first pass runs (the variants, the passes themselves)."""
    width, height = request.output_size
    first_pass = {option.name: option.default for option in OPTIONS if option.first_pass_only}
    return replace(
        request,
        task=Task.IMG2IMG,
        width=width,
        height=height,
        strength=REFINE_STRENGTH,
        **first_pass,
    )
