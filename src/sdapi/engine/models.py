"""Loading a model as a diffusers text-to-image pipeline (sdapi.catalog.models tells where a
model comes from without loading it).

Built-in tiny models are built on first use under the models directory; hub repo ids are
downloaded into its hub cache; single files go through sdapi.engine.checkpoints. Every loader
failure becomes one `ConfigurationError` line, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import AutoPipelineForText2Image, DiffusionPipeline
from huggingface_hub.errors import LocalEntryNotFoundError

from sdapi.catalog.builtins import BUILTIN_MODELS
from sdapi.catalog.models import (
    check_source,
    checkpoint_family_of,
    config_folder,
    model_family,
    registry_for,
)
from sdapi.catalog.registry import ModelEntry, Registry
from sdapi.engine import checkpoints, quiet_libraries
from sdapi.engine.speed import dtype_for
from sdapi.engine.tiny import build_tiny_model
from sdapi.errors import ConfigurationError

#: How much of a loader's error message the one-line ConfigurationError keeps.
_MAX_REASON = 300


def resolve_model_source(ref: str, models_dir: Path, registry: Registry | None = None) -> str:
    """What to load for `ref`: a local folder path, a checkpoint file path or a hub repo id."""
    source = registry_for(registry, models_dir).resolve(ref).source
    if source in BUILTIN_MODELS:
        return str(build_tiny_model(Path(models_dir) / source, source))
    return check_source(source)


def load_pipeline(
    ref: str, models_dir: Path, device: str = "cpu", registry: Registry | None = None
) -> DiffusionPipeline:
    """Load `ref` as a text-to-image pipeline on `device`, progress bar off, no safety checker."""
    models_dir = Path(models_dir)
    entry = registry_for(registry, models_dir).resolve(ref)
    source = resolve_model_source(entry.source, models_dir, Registry())
    quiet_libraries()
    # Half precision halves GPU memory and time; CPUs have no fast fp16 kernels.
    dtype = dtype_for(device, model_family(ref, models_dir, registry))
    try:
        if Path(source).is_file():  # checked: a .safetensors file
            pipe = _checkpoint(entry, Path(source), models_dir, dtype)
        else:
            pipe = _load_folder_or_repo(source, models_dir, dtype)
        pipe.to(device)
    except ConfigurationError:
        raise
    except Exception as exc:  # any loader failure is a configuration problem to report in a line
        raise ConfigurationError(f"cannot load model {ref!r}: {loader_error(exc)}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_folder_or_repo(source: str, models_dir: Path, dtype: Any) -> DiffusionPipeline:
    return AutoPipelineForText2Image.from_pretrained(
        source,
        dtype=dtype,
        cache_dir=models_dir / "hub",
        # Not loaded at all; pipelines without a safety checker ignore both arguments.
        safety_checker=None,
        requires_safety_checker=False,
    )


def _checkpoint(entry: ModelEntry, path: Path, models_dir: Path, dtype: Any) -> DiffusionPipeline:
    family = checkpoint_family_of(entry, path)
    builtin = entry.config
    if builtin is not None and BUILTIN_MODELS.get(builtin) == family:
        build_tiny_model(models_dir / builtin, builtin)
    folder = config_folder(entry, path, family, models_dir)
    return checkpoints.load_single_file(path, family, folder, dtype)


def loader_error(exc: BaseException) -> str:
    """One line on why loading failed; diffusers hides "the hub is unreachable" under "no file"."""
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
