"""Pipeline variants for `panorama` and `self_attention` (spec section 3), from diffusers.

- `panorama`: MultiDiffusion (`StableDiffusionPanoramaPipeline`, Bar-Tal et al. 2023): the
  latent canvas is denoised as overlapping windows of the model's native size whose predictions
  are averaged, so a wide image stays one coherent scene instead of a repeated one.
- `self_attention`: Self-Attention Guidance (`StableDiffusionSAGPipeline`, Hong et al. 2023):
  each step also runs the UNet on a copy blurred where the mid block attends, and steers away
  from it: finer detail, about 1.5 times the time.

Both exist for SD 1.x/2.x text-to-image only (diffusers has no SDXL or SD3 versions), and share
the loaded model's weights (`from_pipe`). Diffusers marks both pipelines deprecated: they are
kept as they are, not developed, which is what pinning diffusers already gives us.

Which families and tasks they serve is the catalog's (sdapi.catalog.options.variant_problem).
"""

from __future__ import annotations

from typing import Any

from diffusers import (
    DiffusionPipeline,
    StableDiffusionPanoramaPipeline,
    StableDiffusionSAGPipeline,
)

from sdapi.jobs import GenerationRequest

PANORAMA = "panorama"
SELF_ATTENTION = "self_attention"
#: SAG's guidance weight: the paper's and diffusers' recommended value.
SAG_SCALE = 0.75


def variant_of(request: GenerationRequest) -> str | None:
    """The variant a request runs on; panorama wins should a request ask for both (the API
    refuses that)."""
    if request.panorama:
        return PANORAMA
    if request.self_attention:
        return SELF_ATTENTION
    return None


class NativePanorama(StableDiffusionPanoramaPipeline):  # type: ignore[misc]
    """Windows of the model's native size. diffusers fixes them at 64 latents (512 px, SD 1.x):
    right for SD 1.x, too small for 768 px SD 2.x models, too large for others."""

    def get_views(
        self,
        panorama_height: int,
        panorama_width: int,
        window_size: int = 64,
        stride: int = 8,
        circular_padding: bool = False,
    ) -> list[tuple[int, int, int, int]]:
        window = int(self.unet.config.sample_size)
        # diffusers' ratio: a window moves by an eighth of itself.
        views: list[tuple[int, int, int, int]] = super().get_views(
            panorama_height,
            panorama_width,
            window_size=window,
            stride=max(1, window // 8),
            circular_padding=circular_padding,
        )
        return views


def derive(base: DiffusionPipeline, variant: str) -> DiffusionPipeline:
    """The variant's pipeline over `base`'s components (no weights are copied)."""
    kind = NativePanorama if variant == PANORAMA else StableDiffusionSAGPipeline
    pipe = kind.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)  # from_pipe does not copy it
    return pipe


def variant_inputs(variant: str | None) -> dict[str, Any]:
    """The variant's own call arguments (a panorama takes its defaults: no wrap-around)."""
    return {"sag_scale": SAG_SCALE} if variant == SELF_ATTENTION else {}
