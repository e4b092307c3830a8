"""What a request asks of a worker: its batch key, its work units and its steps per call.

- `batch_key`: jobs with equal keys can share one pipeline call: the same model, task, size,
  steps, scheduler, guidance and strength, and the same options (each option's own part, in
  sdapi.catalog.options' order).
- `work_units`: the work in 512x512-image-steps, decode included: what a call's time grows with
  beyond its fixed costs (sdapi.costs prices them); options scale it (self-attention guidance,
  panorama windows), a two-pass request adds its refining pass.
- `call_steps`: the denoising steps one call for the request runs.

Torch-free and pure: the API, the queue and the worker all price and group jobs with it.
"""

from __future__ import annotations

from sdapi.catalog.options import OPTIONS
from sdapi.jobs import GenerationRequest, Task

#: One work unit is one denoising step of one 512x512 image.
REFERENCE_PIXELS = 512 * 512
#: The VAE decode of an image costs about this many of its denoising steps (1-2 for SD 1.5 on a
#: GPU, 3-4 for the built-in tiny model on a CPU), so it is counted in its work units.
DECODE_STEPS = 2
#: The strength of the refining img2img pass of `highres_fix` and `upscale`: enough to redraw
#: detail at the larger size, little enough to keep the composition (A1111 users pick 0.3-0.6).
REFINE_STRENGTH = 0.5
#: The x4 upscaler's own factor: scales 2 and 3 run it, then resize its output down.
UPSCALE_NATIVE_SCALE = 4
#: The VAE decode of an upscaler's x4 output costs about this many of its denoising steps
#: (measured on the built-in tiny upscaler on a CPU, 64 to 256 px inputs), so it is counted in.
UPSCALE_DECODE_STEPS = 6


def batch_key(request: GenerationRequest) -> str:
    """Jobs with equal keys can share one pipeline call."""
    parts: list[object] = [
        request.model,
        request.task,
        f"{request.width}x{request.height}",
        request.steps,
        request.scheduler or "default",
        request.guidance_scale,
        request.strength,
    ]
    # Only the options that are on, so requests without an option keep the keys (and the costs
    # learned under them) they had before the option existed.
    for option in OPTIONS:
        if (part := option.key(getattr(request, option.name))) is not None:
            parts.append(part)
    return "|".join(str(part) for part in parts)


def work_units(request: GenerationRequest) -> float:
    """The work in 512x512-image-steps, decode included."""
    if request.task is Task.UPSCALE:
        return _upscale_units(request)
    units = (_denoising_steps(request) + DECODE_STEPS) * request.samples * _pixels(request)
    for option in OPTIONS:
        if option.is_on(getattr(request, option.name)):
            units = option.units(request, units)
    if request.two_pass:
        # The refining pass: img2img at the output size (an upper bound with highres_fix,
        # whose first pass may be smaller than counted).
        width, height = request.output_size
        refine = (_refine_steps(request) + DECODE_STEPS) * request.samples
        units += refine * width * height / REFERENCE_PIXELS
    return units


def call_steps(request: GenerationRequest) -> int:
    """Denoising steps a call for this request runs, both passes of a two-pass one."""
    if request.task is Task.UPSCALE:
        return request.steps
    return _denoising_steps(request) + (_refine_steps(request) if request.two_pass else 0)


def _denoising_steps(request: GenerationRequest) -> int:
    if request.task is not Task.TEXT2IMG and request.strength is not None:
        return max(1, int(request.steps * request.strength))  # diffusers skips the early steps
    return request.steps


def _refine_steps(request: GenerationRequest) -> int:
    return max(1, int(request.steps * REFINE_STRENGTH))


def _pixels(request: GenerationRequest) -> float:
    return request.width * request.height / REFERENCE_PIXELS


def _upscale_units(request: GenerationRequest) -> float:
    """The x4 upscaler runs its steps on the input's pixels and decodes a 4x image; both scale
    with the area of that 4x image, which is counted like a generated one (the input is
    capped, so this stays within a few hundred units)."""
    native = UPSCALE_NATIVE_SCALE / (request.scale or UPSCALE_NATIVE_SCALE)
    pixels = request.width * native * request.height * native
    return (request.steps + UPSCALE_DECODE_STEPS) * request.samples * pixels / REFERENCE_PIXELS
