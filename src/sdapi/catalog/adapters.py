"""LoRA weights and textual-inversion embeddings: the wire's names, and their files on disk.

A client names them (`lora_model`, `lora_strength`, `embeddings_model`); the operator installs
them as single safetensors files in the models folder:

- `<models_dir>/loras/<name>.safetensors`: a LoRA in diffusers, kohya or PEFT format.
- `<models_dir>/embeddings/<name>.safetensors`: a textual-inversion embedding (diffusers or
  A1111 format, one tensor; SDXL files hold `clip_l` and `clip_g`). The file name is the trigger
  word: a prompt uses the embedding by containing `<name>`.

Torch-free: the API parses and validates with these functions without loading anything; the
engine loads the files (sdapi.engine.adapter_loader).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Final

from sdapi.catalog.families import SD3, Family

LORAS_DIR: Final = "loras"
EMBEDDINGS_DIR: Final = "embeddings"
SUFFIX: Final = ".safetensors"
#: Most LoRAs (and embeddings) one request may combine; each one adds work to every step.
MAX_LORAS: Final = 5
MAX_EMBEDDINGS: Final = 5
#: A LoRA's weight (its `lora_strength`); 0 turns it off, above 2 images degrade into noise.
MIN_LORA_WEIGHT: Final = 0.0
MAX_LORA_WEIGHT: Final = 2.0
DEFAULT_LORA_WEIGHT: Final = 1.0

#: A file name without its suffix: no separators and no leading dot, so it never leaves its folder.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$", re.ASCII)

#: (name, weight)
Lora = tuple[str, float]


def parse_loras(lora_model: str | None, lora_strength: str | None) -> tuple[Lora, ...]:
    """The wire's `lora_model` ("a,b") and `lora_strength` ("0.8" or "0.8,0.5") as (name, weight).

    Strengths are one for all the LoRAs or one per LoRA, in order; none means 1.0 each. A strength
    without any LoRA is ignored (clients send their default). Raises ValueError with a message for
    the client; ranges and files are checked by `check_adapters`.
    """
    names = _split(lora_model)
    if not names:
        return ()
    _check_unique(names, "lora_model")
    weights = [_weight(text) for text in _split(lora_strength)]
    if not weights:
        weights = [DEFAULT_LORA_WEIGHT]
    if len(weights) == 1:
        weights = weights * len(names)
    if len(weights) != len(names):
        raise ValueError(
            f"lora_strength has {len(weights)} values for {len(names)} LoRAs: "
            "give one for all of them or one per LoRA"
        )
    return tuple(zip(names, weights, strict=True))


def parse_embeddings(embeddings_model: str | None) -> tuple[str, ...]:
    """The wire's `embeddings_model`: one name, or several separated by commas."""
    names = _split(embeddings_model)
    _check_unique(names, "embeddings_model")
    return tuple(names)


def check_adapters(
    models_dir: Path,
    loras: tuple[Lora, ...],
    embeddings: tuple[str, ...],
    family: Family | None = None,
) -> str | None:
    """Why a request's LoRAs and embeddings cannot run here, or None when they can.

    Checks the counts, names, weights and that each file is installed; with the model's `family`
    (sdapi.catalog.models.model_family) also that it takes embeddings. Never names server paths.
    """
    if len(loras) > MAX_LORAS:
        return f"at most {MAX_LORAS} LoRAs per request (got {len(loras)})"
    if len(embeddings) > MAX_EMBEDDINGS:
        return f"at most {MAX_EMBEDDINGS} embeddings per request (got {len(embeddings)})"
    if embeddings and family == SD3:
        return "sd3 models do not take textual-inversion embeddings"
    for name, weight in loras:
        if problem := _lora_weight_problem(name, weight) or _file_problem(
            models_dir, LORAS_DIR, "LoRA", name
        ):
            return problem
    for name in embeddings:
        if problem := _file_problem(models_dir, EMBEDDINGS_DIR, "embedding", name):
            return problem
    return None


def lora_file(models_dir: Path, name: str) -> Path:
    """Where LoRA `name` is installed (ValueError for a name that is not a plain file name)."""
    return _file(models_dir, LORAS_DIR, name)


def embedding_file(models_dir: Path, name: str) -> Path:
    """Where embedding `name` is installed (ValueError for a name that is not a plain file name)."""
    return _file(models_dir, EMBEDDINGS_DIR, name)


def available_loras(models_dir: Path) -> list[str]:
    """The names of the installed LoRAs, sorted."""
    return _available(Path(models_dir) / LORAS_DIR)


def available_embeddings(models_dir: Path) -> list[str]:
    """The names of the installed embeddings, sorted."""
    return _available(Path(models_dir) / EMBEDDINGS_DIR)


def is_valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def _split(text: str | None) -> list[str]:
    """Comma-separated items, spaces around them ignored; None or blank is no item."""
    if text is None or not text.strip():
        return []
    return [item.strip() for item in text.split(",")]


def _check_unique(names: list[str], field: str) -> None:
    if "" in names:
        raise ValueError(f"{field} has an empty name (two commas in a row?)")
    if len(set(names)) != len(names):
        raise ValueError(f"{field} names the same model twice")


def _weight(text: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise ValueError(f"lora_strength {text!r} is not a number") from None
    if not math.isfinite(weight):
        raise ValueError(f"lora_strength {text!r} is not a finite number")
    return weight


def _lora_weight_problem(name: str, weight: float) -> str | None:
    if MIN_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
        return None
    return (
        f"lora_strength {weight:g} for {name!r} is out of range "
        f"({MIN_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g})"
    )


def _file_problem(models_dir: Path, folder: str, kind: str, name: str) -> str | None:
    if not is_valid_name(name):
        return (
            f"{kind} name {name!r} is not valid: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit, at most 100 characters"
        )
    if not _file(models_dir, folder, name).is_file():
        return f"{kind} {name!r} is not installed on this server"
    return None


def _file(models_dir: Path, folder: str, name: str) -> Path:
    if not is_valid_name(name):
        raise ValueError(f"{name!r} is not a valid LoRA or embedding name")
    return Path(models_dir) / folder / f"{name}{SUFFIX}"


def _available(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    names = (p.name.removesuffix(SUFFIX) for p in folder.glob(f"*{SUFFIX}") if p.is_file())
    return sorted(name for name in names if is_valid_name(name))
