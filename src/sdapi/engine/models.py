"""Where a model comes from, and loading it as a diffusers text-to-image pipeline.

A model reference is one of: a built-in tiny model (`sdapi-tiny`, `sdapi-tiny-sdxl`,
`sdapi-tiny-sd3`, built on first use under the models directory), a local diffusers folder, or a
Hugging Face repo id ("owner/name", downloaded into the models directory's hub cache). Every
mistake an operator can make here becomes one clear `ConfigurationError` line, never a traceback.
`model_family` tells a reference's family without loading anything (torch-free).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from sdapi.engine.families import Family, family_of_folder
from sdapi.engine.tiny import BUILTIN_MODELS, MODEL_INDEX, build_tiny_model
from sdapi.errors import ConfigurationError

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: Hugging Face repo ids: "owner/name", letters, digits, "-", "_", "."; no "--" or "..".
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$", re.ASCII)
#: Single-file checkpoints: recognised only to refuse them with a clear message.
_CHECKPOINT_SUFFIXES = frozenset({".safetensors", ".ckpt", ".bin", ".pt", ".pth"})
#: Library log levels we force unless the operator set their own (e.g. "info" to debug loading).
_VERBOSITY_VARS = ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY")
#: How much of a loader's error message the one-line ConfigurationError keeps.
_MAX_REASON = 300


def resolve_model_source(ref: str, models_dir: Path) -> str:
    """What to hand `from_pretrained` for `ref`: a local folder path or a hub repo id."""
    if ref in BUILTIN_MODELS:
        return str(build_tiny_model(Path(models_dir) / ref, ref))
    return check_model_ref(ref)


def check_model_ref(ref: str) -> str:
    """Validate a reference without loading anything (cheap: `serve` calls it at start)."""
    if ref in BUILTIN_MODELS:
        return ref
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / MODEL_INDEX).is_file():
            raise ConfigurationError(
                f"model folder {path} has no {MODEL_INDEX}: it is not a diffusers model folder"
            )
        return str(path.resolve())
    if path.is_file():
        raise ConfigurationError(
            f"model {ref} is a single file; only diffusers folders and hub repo ids are supported"
        )
    if _looks_like_path(ref):
        raise ConfigurationError(f"model path {ref} does not exist")
    if not _is_repo_id(ref):
        raise ConfigurationError(
            f"model {ref!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}), "
            "an existing folder, nor a Hugging Face repo id (owner/name)"
        )
    return ref


def model_family(ref: str, models_dir: Path | None = None) -> Family | None:
    """The family of `ref` without loading it: "sd", "sdxl", "sd3", or None when unknown.

    Built-in models know theirs; folders (and hub models already in `models_dir`'s cache) say it
    in model_index.json. A hub model not downloaded yet, or another kind of pipeline, is None.
    Torch-free and cheap, for the API's request validation.
    """
    if ref in BUILTIN_MODELS:
        return BUILTIN_MODELS[ref]
    path = Path(ref).expanduser()
    if path.is_dir():
        return family_of_folder(path)
    if models_dir is None or not _is_repo_id(ref):
        return None
    return _cached_family(ref, Path(models_dir) / "hub")


def _cached_family(repo_id: str, cache_dir: Path) -> Family | None:
    """The family of a hub model in huggingface_hub's cache layout, if it was downloaded."""
    snapshots = cache_dir / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    for folder in sorted(snapshots.glob("*")):
        family = family_of_folder(folder)
        if family is not None:
            return family
    return None


def load_pipeline(ref: str, models_dir: Path, device: str = "cpu") -> DiffusionPipeline:
    """Load `ref` as a text-to-image pipeline on `device`, progress bar off, no safety checker."""
    models_dir = Path(models_dir)
    source = resolve_model_source(ref, models_dir)
    quiet_libraries()
    import torch
    from diffusers import AutoPipelineForText2Image

    # Half precision halves GPU memory and time; CPUs have no fast fp16 kernels.
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(
            source,
            dtype=dtype,
            cache_dir=models_dir / "hub",
            # Not loaded at all; pipelines without a safety checker ignore both arguments.
            safety_checker=None,
            requires_safety_checker=False,
        )
        pipe.to(device)
    except Exception as exc:  # any loader failure is a configuration problem to report in a line
        raise ConfigurationError(f"cannot load model {ref!r}: {_reason(exc)}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def quiet_libraries() -> None:
    """Silence diffusers/transformers chatter, warnings and progress bars; errors still show.

    The environment variables must be set before transformers is first imported (it warns about
    the missing torchvision at import time); the explicit calls cover a library imported earlier.
    An operator's own DIFFUSERS_VERBOSITY/TRANSFORMERS_VERBOSITY wins.
    """
    forced = [var for var in _VERBOSITY_VARS if os.environ.setdefault(var, "error") == "error"]
    import diffusers.utils.logging
    import transformers.utils.logging

    # Loading/saving bars are noise in a worker's log (hub download bars are huggingface_hub's).
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    # diffusers still passes an argument huggingface_hub deprecated; nothing an operator can fix.
    warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
    if "DIFFUSERS_VERBOSITY" in forced:
        diffusers.utils.logging.set_verbosity_error()
    if "TRANSFORMERS_VERBOSITY" in forced:
        transformers.utils.logging.set_verbosity_error()


def _looks_like_path(ref: str) -> bool:
    """Refs the operator meant as a path, even though "owner/name" contains a slash too."""
    return (
        ref.startswith(("/", ".", "~"))
        or "\\" in ref
        or ref.count("/") > 1
        or Path(ref).suffix.lower() in _CHECKPOINT_SUFFIXES
    )


def _is_repo_id(ref: str) -> bool:
    return bool(_REPO_ID.match(ref)) and "--" not in ref and ".." not in ref


def _reason(exc: BaseException) -> str:
    """One line on why loading failed; diffusers hides "the hub is unreachable" under "no file"."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    link: BaseException | None = exc
    while link is not None:
        if isinstance(link, LocalEntryNotFoundError):
            return "not in the local cache, and the Hugging Face hub cannot be reached"
        link = link.__cause__ or link.__context__
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    return reason[:_MAX_REASON]
