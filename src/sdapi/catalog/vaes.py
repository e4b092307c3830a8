"""VAEs a request may decode with (the wire's `vae`), installed by the operator in the models dir.

A client names a VAE; it is only ever looked up under `<models_dir>/vae/`, never downloaded, and
the name can never leave that folder (one or two plain segments, no "..", no absolute paths):

- `<models_dir>/vae/<name>/`: a diffusers AutoencoderKL folder (config.json and safetensors
  weights; pickle .bin weights are never loaded). `<name>` is one segment or the hub's
  "org/name": `hf download stabilityai/sd-vae-ft-mse --local-dir
  models/vae/stabilityai/sd-vae-ft-mse` serves requests naming "stabilityai/sd-vae-ft-mse".
- `<models_dir>/vae/<name>.safetensors`: a single file as A1111 and civitai distribute them
  (e.g. vae-ft-mse-840000-ema-pruned.safetensors), original (LDM) or diffusers key layout. It has
  no config: the serving model's own VAE config is used, so it must have that architecture.

A folder wins over a file of the same name. "", "none", "default" and "automatic" mean the
model's own VAE. Torch-free: the API validates names and the VAE's latent channels (config.json,
or the safetensors header of a file) without loading anything; sdapi.engine.vae_loader loads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sdapi.catalog.families import SD, SD3, SDXL

VAE_DIR: Final = "vae"
SUFFIX: Final = ".safetensors"
CONFIG: Final = "config.json"
#: A diffusers folder's weights (sharded or a variant such as fp16 included).
WEIGHTS: Final = "diffusion_pytorch_model*.safetensors"
#: The only VAE class the engine swaps in: the one SD, SDXL and SD3 pipelines come with.
VAE_CLASS: Final = "AutoencoderKL"
#: Wire values meaning "the model's own VAE" (A1111 spells it "Automatic" or "None").
DEFAULT_NAMES: Final = frozenset({"", "none", "default", "automatic"})
#: Latent channels each family's denoiser works in.
LATENT_CHANNELS: Final = {SD: 4, SDXL: 4, SD3: 16}
#: Every family's VAE shrinks images 8 times (the image processors are built for it).
SCALE_FACTOR: Final = 8
#: Most installed names an error message lists.
_LISTED: Final = 10
#: Real safetensors headers are well under 1 MiB; past this it is not a VAE file we parse.
_MAX_HEADER: Final = 64 * 2**20
#: One path segment: no separators and no leading dot, so a name never leaves its folder.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$", re.ASCII)
#: Prefixes of the VAE's tensors in single files (a whole checkpoint keeps it under the first).
_FILE_PREFIXES: Final = ("first_stage_model.", "vae.", "")
#: Decoder up-block indexes: original layout ("decoder.up.0.") or diffusers' ("up_blocks").
_UP_BLOCK = re.compile(r"decoder\.up(?:_blocks)?\.(\d+)\.")


@dataclass(frozen=True, slots=True)
class VaeShape:
    """What must match the model for a VAE to decode its latents."""

    latent_channels: int
    scale_factor: int


def parse_vae(value: str | None) -> str | None:
    """The wire's `vae` as an installed-VAE name, or None for the model's own VAE.

    Raises ValueError with a message for the client when it is not a safe name; a trailing
    ".safetensors" is dropped (clients copy A1111 file names). Whether it is installed is
    `check_vae`'s job.
    """
    if value is None or value.strip().lower() in DEFAULT_NAMES:
        return None
    name = value.strip()
    if name.lower().endswith(SUFFIX) and len(name) > len(SUFFIX):
        name = name[: -len(SUFFIX)]
    if not is_valid_name(name):
        raise ValueError(
            f"vae {value[:120]!r} is not a valid VAE name: use 'name' or 'org/name' of letters, "
            "digits, '_', '-' and '.', each part starting with a letter or digit"
        )
    return name


def is_valid_name(name: str) -> bool:
    """One or two safe segments separated by "/": never absolute, never "..", no backslash."""
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(_SEGMENT.match(part) for part in parts)


def check_vae(models_dir: Path, name: str, family: str | None) -> str | None:
    """Why VAE `name` cannot decode for a model of `family` here, or None when it can.

    Checks that it is installed (listing what is, briefly), that it is an AutoencoderKL, and that
    its latent channels and scale factor fit the family (None: any). Never names server paths.
    """
    if not is_valid_name(name):
        return f"vae {name[:120]!r} is not a valid VAE name"
    source = vae_source(models_dir, name)
    if source is None:
        return f"VAE {name!r} is not installed on this server ({_installed_text(models_dir)})"
    try:
        shape = inspect_vae(source)
    except ValueError as exc:
        return f"VAE {name!r} cannot be used: {exc}"
    return _fit_problem(name, shape, family)


def vae_source(models_dir: Path, name: str) -> Path | None:
    """The folder or file VAE `name` is installed as; None when it is not (or the name is bad)."""
    if not is_valid_name(name):
        return None
    base = Path(models_dir) / VAE_DIR
    folder = base / name
    if (folder / CONFIG).is_file():
        return folder
    file = base / f"{name}{SUFFIX}"
    return file if file.is_file() else None


def installed_vaes(models_dir: Path) -> list[str]:
    """The names of the installed VAEs, sorted: folders and files, one level of "org/" deep."""
    base = Path(models_dir) / VAE_DIR
    names = set(_names_in(base, ""))
    if base.is_dir():
        for org in base.iterdir():
            if org.is_dir() and not (org / CONFIG).is_file() and _SEGMENT.match(org.name):
                names.update(_names_in(org, f"{org.name}/"))
    return sorted(names)


def inspect_vae(source: Path) -> VaeShape:
    """The latent channels and scale factor of an installed VAE, read without torch.

    ValueError, with a reason fit for a client, when the config or header cannot be read, the
    folder holds another class of model, or has no safetensors weights (pickles are never loaded:
    loading one can run arbitrary code).
    """
    if not source.is_dir():
        return _file_shape(source)
    shape = _folder_shape(source / CONFIG)
    if not any(source.glob(WEIGHTS)):
        raise ValueError(f"its folder has no {WEIGHTS} weights (pickle .bin files are not loaded)")
    return shape


# --- helpers -------------------------------------------------------------------------------------


def _names_in(folder: Path, prefix: str) -> list[str]:
    if not folder.is_dir():
        return []
    names = []
    for entry in folder.iterdir():
        if entry.is_dir() and (entry / CONFIG).is_file():
            names.append(prefix + entry.name)
        elif entry.is_file() and entry.name.endswith(SUFFIX):
            names.append(prefix + entry.name.removesuffix(SUFFIX))
    return [name for name in names if is_valid_name(name)]


def _installed_text(models_dir: Path) -> str:
    names = installed_vaes(models_dir)
    if not names:
        return "none are installed"
    more = len(names) - _LISTED
    listed = ", ".join(names[:_LISTED]) + (f" and {more} more" if more > 0 else "")
    return f"installed: {listed}"


def _fit_problem(name: str, shape: VaeShape, family: str | None) -> str | None:
    channels = LATENT_CHANNELS.get(family or "")
    if channels is None:
        return None  # an unknown family: the loader compares with the model's own VAE
    if shape.latent_channels != channels:
        return (
            f"VAE {name!r} has {shape.latent_channels} latent channels; "
            f"{family} models need a VAE with {channels}"
        )
    if shape.scale_factor != SCALE_FACTOR:
        return (
            f"VAE {name!r} shrinks images {shape.scale_factor} times; "
            f"{family} models need a VAE that shrinks them {SCALE_FACTOR} times"
        )
    return None


def _folder_shape(config_file: Path) -> VaeShape:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ValueError("its config.json cannot be read") from None
    if not isinstance(config, dict):
        raise ValueError("its config.json is not a model config")
    kind = config.get("_class_name", VAE_CLASS)
    if kind != VAE_CLASS:
        raise ValueError(f"it is a {str(kind)[:60]}; only {VAE_CLASS} VAEs are supported")
    # diffusers' own defaults for keys a config leaves out
    channels = config.get("latent_channels", 4)
    blocks = config.get("block_out_channels", [64])
    if not isinstance(channels, int) or not isinstance(blocks, list) or not blocks:
        raise ValueError("its config.json is not an AutoencoderKL config")
    return VaeShape(channels, 2 ** (len(blocks) - 1))


def _file_shape(path: Path) -> VaeShape:
    header = _header(path)
    for prefix in _FILE_PREFIXES:
        conv_in = header.get(f"{prefix}decoder.conv_in.weight")
        if isinstance(conv_in, dict):
            break
    else:
        raise ValueError("the file holds no VAE decoder")
    shape = conv_in.get("shape")
    if not isinstance(shape, list) or len(shape) != 4 or not isinstance(shape[1], int):
        raise ValueError("the file's decoder has an unexpected shape")
    ups = {
        match.group(1)
        for key in header
        if key.startswith(prefix) and (match := _UP_BLOCK.match(key, len(prefix)))
    }
    return VaeShape(shape[1], 2 ** max(len(ups) - 1, 0))


def _header(path: Path) -> dict[str, Any]:
    """A safetensors header: 8 bytes of length (little-endian), then JSON naming each tensor."""
    try:
        with open(path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            if not 2 <= size <= min(_MAX_HEADER, path.stat().st_size - 8):
                raise ValueError
            header = json.loads(file.read(size))
    except (OSError, ValueError):  # ValueError also covers json's decode errors
        raise ValueError("it is not a readable safetensors file") from None
    if not isinstance(header, dict):
        raise ValueError("it is not a readable safetensors file")
    return header
