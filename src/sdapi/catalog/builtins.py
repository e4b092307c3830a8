"""The built-in tiny models' names (sdapi.engine.tiny builds them): always served, no download.

- `sdapi-tiny`: Stable Diffusion 1.x; `sdapi-tiny-sdxl`: SDXL; `sdapi-tiny-sd3`: SD3.
- `sdapi-tiny-upscaler`: the x4 upscaler, not a family of text-to-image models, so not in
  BUILTIN_MODELS; only the super-resolution engine loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sdapi.catalog.families import SD, SD3, SDXL, Family

TINY_MODEL_ID = "sdapi-tiny"
TINY_SDXL_MODEL_ID = "sdapi-tiny-sdxl"
TINY_SD3_MODEL_ID = "sdapi-tiny-sd3"
TINY_UPSCALER_ID = "sdapi-tiny-upscaler"
#: Built-in model id -> the family its builder makes.
BUILTIN_MODELS: Mapping[str, Family] = MappingProxyType(
    {TINY_MODEL_ID: SD, TINY_SDXL_MODEL_ID: SDXL, TINY_SD3_MODEL_ID: SD3}
)
#: The file that makes a folder a diffusers pipeline.
MODEL_INDEX = "model_index.json"
