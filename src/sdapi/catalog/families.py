"""Model families: which Stable Diffusion generation a pipeline belongs to.

The family decides which pipeline classes run a model (diffusers picks them by class name) and
which schedulers apply: SD 1.x/2.x and SDXL predict noise (epsilon or v), SD3 is a flow-matching
model. Torch-free: the API reads a model folder's `model_index.json` to validate requests without
loading anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

Family = Literal["sd", "sdxl", "sd3"]

SD: Final = "sd"
SDXL: Final = "sdxl"
SD3: Final = "sd3"
FAMILIES: Final[tuple[Family, ...]] = (SD, SDXL, SD3)

#: Pipeline class name prefixes -> family, most specific first ("StableDiffusionXL..." also
#: starts with "StableDiffusion"). Covers the text2img, img2img and inpaint classes of each.
_CLASS_PREFIXES: Final[tuple[tuple[str, Family], ...]] = (
    ("StableDiffusion3", SD3),
    ("StableDiffusionXL", SDXL),
    ("StableDiffusion", SD),
)
#: The text2img/img2img/inpaint classes; other StableDiffusion* pipelines (upscalers,
#: ControlNet, ...) are not a family the engine drives.
_TASK_SUFFIXES: Final = ("Pipeline", "Img2ImgPipeline", "InpaintPipeline")
#: Image sizes must be multiples of this: the VAE's factor 8, times SD3's patch size 2.
_SIZE_MULTIPLE: Final[dict[Family, int]] = {SD: 8, SDXL: 8, SD3: 16}


def family_of_class(class_name: str) -> Family | None:
    """The family of a pipeline class name (model_index.json's `_class_name`); None if other."""
    for prefix, family in _CLASS_PREFIXES:
        if class_name.startswith(prefix):
            rest = class_name[len(prefix) :]
            return family if rest in _TASK_SUFFIXES else None
    return None


def family_of(pipe: DiffusionPipeline) -> Family | None:
    """The family of a loaded pipeline; None for pipelines outside SD 1.x/2.x, SDXL and SD3."""
    return family_of_class(type(pipe).__name__)


def family_of_folder(folder: Path) -> Family | None:
    """The family of a diffusers folder, from its model_index.json; None if unknown or absent."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = index.get("_class_name") if isinstance(index, dict) else None
    return family_of_class(name) if isinstance(name, str) else None


def size_multiple(family: Family | None) -> int:
    """What width and height must be multiples of (8 for unknown families, like SD)."""
    return 8 if family is None else _SIZE_MULTIPLE[family]


def check_size(family: Family | None, width: int, height: int) -> str | None:
    """An error message when the family cannot make a `width` x `height` image, else None."""
    multiple = size_multiple(family)
    if width % multiple or height % multiple:
        who = f"{family} models need" if family is not None else "this model needs"
        return f"{who} width and height multiples of {multiple} (asked {width}x{height})"
    return None
