"""Single-file checkpoints: a whole pipeline in one `.safetensors` file, as civitai and the
A1111/ComfyUI world distribute models, in the original (LDM / Stability) key layout.

What is in a file is told from its tensor names alone, read from the safetensors header without
torch (a few hundred KB at the start of a multi-GB file): the API and `sdapi models add` use it.
The engine loads them (sdapi.engine.checkpoints). Pickle checkpoints (.ckpt, .pt, .bin) are
refused: loading one can run arbitrary code.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Final, Literal

from sdapi.catalog.families import SD, SD3, SDXL, Family
from sdapi.errors import ConfigurationError

SAFETENSORS_SUFFIX: Final = ".safetensors"
#: Single-file formats we recognise in order to refuse them with the reason.
PICKLE_SUFFIXES: Final = frozenset({".ckpt", ".bin", ".pt", ".pth"})
#: Real headers are well under 1 MiB; anything past this is not a checkpoint we want to parse.
_MAX_HEADER: Final = 64 * 2**20

#: What a checkpoint holds: SD 1.x, SD 2.x, SDXL base, SD3.
Kind = Literal["v1", "v2", "xl", "sd3"]
KIND_FAMILIES: Final[dict[Kind, Family]] = {"v1": SD, "v2": SD, "xl": SDXL, "sd3": SD3}
#: The usual kind of each family, for a checkpoint whose names do not show it.
FAMILY_KINDS: Final[dict[Family, Kind]] = {SD: "v1", SDXL: "xl", SD3: "sd3"}
#: The base model whose configs a checkpoint of each kind needs when its entry names none (the
#: repos diffusers itself picks); used only when already in the models directory's hub cache.
DEFAULT_CONFIGS: Final[dict[Kind, str]] = {
    "v1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "v2": "stabilityai/stable-diffusion-2-1",
    "xl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd3": "stabilityai/stable-diffusion-3-medium-diffusers",
}
#: The family's text-to-image pipeline class in diffusers.
PIPELINES: Final[dict[Family, str]] = {
    SD: "StableDiffusionPipeline",
    SDXL: "StableDiffusionXLPipeline",
    SD3: "StableDiffusion3Pipeline",
}


def is_single_file(ref: str) -> bool:
    """Whether `ref` names a single-file checkpoint (by its suffix; it may not exist)."""
    suffix = Path(ref).suffix.lower()
    return suffix == SAFETENSORS_SUFFIX or suffix in PICKLE_SUFFIXES


def check_checkpoint(path: Path) -> None:
    """ConfigurationError unless `path` is a readable safetensors file (header only)."""
    suffix = path.suffix.lower()
    if suffix != SAFETENSORS_SUFFIX:
        raise ConfigurationError(
            f"model file {path}: only {SAFETENSORS_SUFFIX} single files are supported"
            + (
                " (pickle checkpoints can run code when loaded)"
                if suffix in PICKLE_SUFFIXES
                else ""
            )
        )
    tensor_names(path)


def tensor_names(path: Path) -> list[str]:
    """The tensor names in a safetensors file, from its header (8 bytes of length, then JSON)."""
    try:
        with open(path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            if not 2 <= size <= min(_MAX_HEADER, path.stat().st_size - 8):
                raise ValueError("bad header length")
            header = json.loads(file.read(size))
    except OSError as exc:
        raise ConfigurationError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except ValueError:  # also json's decode errors
        raise ConfigurationError(f"{path} is not a safetensors file") from None
    if not isinstance(header, dict):
        raise ConfigurationError(f"{path} is not a safetensors file")
    return [name for name in header if name != "__metadata__"]


def checkpoint_kind(names: Collection[str]) -> Kind | None:
    """Which model a checkpoint in the original layout holds, from its tensor names; None when
    it is none of SD 1.x, SD 2.x, SDXL (base) or SD3."""
    names = set(names)
    if any(
        name.startswith(("model.diffusion_model.joint_blocks.", "joint_blocks.")) for name in names
    ):
        return "sd3"
    if "conditioner.embedders.1.model.positional_embedding" in names:
        return "xl"  # the base model's OpenCLIP bigG encoder (the refiner has only that one)
    if not any(name.startswith("model.diffusion_model.input_blocks.") for name in names):
        return None
    if any(name.startswith("conditioner.embedders.") for name in names):
        return None  # an SDXL refiner or another conditioner-based model: not text2img
    if any(name.startswith("cond_stage_model.model.") for name in names):
        return "v2"  # SD 2.x conditions on OpenCLIP ViT-H
    return "v1"


def checkpoint_family(path: Path) -> Family | None:
    """The family of a checkpoint file from its tensor names, or None when not recognised."""
    kind = checkpoint_kind(tensor_names(path))
    return KIND_FAMILIES[kind] if kind is not None else None
