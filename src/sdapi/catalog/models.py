"""Where a model comes from, told without loading it (the engine loads: sdapi.engine.models).

A model reference is one of: an id of the model registry (sdapi.catalog.registry, which maps it
to one of the following, with a family and request defaults), a built-in tiny model
(`sdapi-tiny`, `sdapi-tiny-sdxl`, `sdapi-tiny-sd3`, built by a worker on first use under the
models directory), a local diffusers folder, a single-file `.safetensors` checkpoint
(sdapi.catalog.checkpoints), or a Hugging Face repo id ("owner/name", downloaded into the models
directory's hub cache). Every mistake an operator can make here becomes one clear
`ConfigurationError` line, never a traceback. `model_family` and `model_scheduler` tell a
reference's family and scheduler from its files, for the API's request checks.

Each function takes an optional `registry`. Without one, the registry is read from
`sdapi.catalog.registry.default_models_file`: $SDAPI_MODELS_FILE, which `sdapi serve` and
`sdapi worker` set, else `models.toml` beside the models directory. That keeps callers that know
only a models directory (an Engine loading its model in a worker) resolving registry ids with no
new argument.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sdapi.catalog import checkpoints
from sdapi.catalog.builtins import BUILTIN_MODELS, MODEL_INDEX, TINY_UPSCALER_ID
from sdapi.catalog.families import Family, family_of_folder
from sdapi.catalog.registry import ModelEntry, Registry, default_models_file
from sdapi.errors import ConfigurationError

#: Hugging Face repo ids: "owner/name", letters, digits, "-", "_", "."; no "--" or "..".
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$", re.ASCII)


def check_model_ref(
    ref: str, registry: Registry | None = None, models_dir: Path | None = None
) -> str:
    """Validate a reference without loading anything (cheap: `serve` calls it at start) and
    return its source as checked. For a checkpoint file this includes its family and, given
    `models_dir`, that the configs it needs are at hand."""
    entry = registry_for(registry, models_dir).resolve(ref)
    source = check_source(entry.source)
    if Path(source).is_file():  # checked: a .safetensors file
        family = checkpoint_family_of(entry, Path(source))
        if models_dir is not None:
            config_folder(entry, Path(source), family, Path(models_dir))
    elif entry.config is not None:
        raise ConfigurationError(
            f"model {entry.id!r}: config is only for single-file checkpoints; {source} is not one"
        )
    return source


def check_source(ref: str) -> str:
    """A source as given to a registry entry or `--model`; no registry ids here."""
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
        checkpoints.check_checkpoint(path)
        return str(path.resolve())
    if _looks_like_path(ref):
        raise ConfigurationError(f"model path {ref} does not exist")
    if not _is_repo_id(ref):
        raise ConfigurationError(
            f"model {ref!r} is neither a registry id, a built-in model "
            f"({', '.join(BUILTIN_MODELS)}), an existing folder or .safetensors file, "
            "nor a Hugging Face repo id (owner/name)"
        )
    return ref


def model_family(
    ref: str, models_dir: Path | None = None, registry: Registry | None = None
) -> Family | None:
    """The family of `ref` without loading it: "sd", "sdxl", "sd3", or None when unknown.

    A registry entry may declare it; built-in models know theirs; folders (and hub models already
    in `models_dir`'s cache) say it in model_index.json; checkpoint files by their tensor names.
    A hub model not downloaded yet, or another kind of pipeline, is None. Torch-free and cheap,
    for the API's request validation: it never raises over a broken registry file (the server
    checked the file at start; the worker reports the problem when it loads the model).
    """
    entry = _entry(ref, models_dir, registry)
    if entry.family is not None:
        return entry.family
    return _source_family(entry.source, models_dir)


def model_scheduler(
    ref: str, models_dir: Path | None = None, registry: Registry | None = None
) -> str | None:
    """The class name of `ref`'s own scheduler, read from its files when they are at hand (a
    folder, a hub model in the cache, a built-in model once built); None otherwise. Torch-free."""
    folder = _local_folder(_entry(ref, models_dir, registry).source, models_dir)
    if folder is None:
        return None
    try:
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("_class_name") if isinstance(config, dict) else None
    return name if isinstance(name, str) else None


def _entry(ref: str, models_dir: Path | None, registry: Registry | None) -> ModelEntry:
    # Never raises over a broken registry file (the server checked it at start).
    try:
        return registry_for(registry, models_dir).resolve(ref)
    except ConfigurationError:
        return Registry().resolve(ref)


def _local_folder(source: str, models_dir: Path | None) -> Path | None:
    """The diffusers folder of a source, if it is on disk (single files have none of their own)."""
    if source in BUILTIN_MODELS:
        return Path(models_dir) / source if models_dir is not None else None
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if models_dir is None or not _is_repo_id(source):
        return None
    return _cached_snapshot(source, Path(models_dir) / "hub")


def _source_family(source: str, models_dir: Path | None) -> Family | None:
    if source in BUILTIN_MODELS:
        return BUILTIN_MODELS[source]
    path = Path(source).expanduser()
    if path.is_dir():
        return family_of_folder(path)
    if path.is_file():
        try:
            return checkpoints.checkpoint_family(path)
        except ConfigurationError:
            return None
    if models_dir is None or not _is_repo_id(source):
        return None
    return _cached_family(source, Path(models_dir) / "hub")


def _cached_family(repo_id: str, cache_dir: Path) -> Family | None:
    """The family of a hub model in huggingface_hub's cache layout, if it was downloaded."""
    snapshot = _cached_snapshot(repo_id, cache_dir)
    return family_of_folder(snapshot) if snapshot is not None else None


def _cached_snapshot(repo_id: str, cache_dir: Path) -> Path | None:
    """A downloaded snapshot (a diffusers folder) of `repo_id` in huggingface_hub's cache."""
    snapshots = cache_dir / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    for folder in sorted(snapshots.glob("*")):
        if family_of_folder(folder) is not None:
            return folder
    return None


def checkpoint_family_of(entry: ModelEntry, path: Path) -> Family:
    """The entry's family, else the one the file's tensor names show; one of them is needed to
    pick the pipeline class."""
    family = entry.family or checkpoints.checkpoint_family(path)
    if family is None:
        raise ConfigurationError(
            f"cannot tell the family of checkpoint {path} from its tensor names; declare it "
            "(`sdapi models add ID PATH --family sd|sdxl|sd3`)"
        )
    return family


def config_folder(entry: ModelEntry, path: Path, family: Family, models_dir: Path) -> Path:
    """The local diffusers folder holding the configs for checkpoint `path`: the entry's
    `config` (a built-in model, which the engine builds there before loading, a folder, or a hub
    repo id already in the cache), else the base model diffusers would pick for the file's kind,
    if it is in the cache. Never downloads."""
    config = entry.config or _default_config(path, family)
    if config in BUILTIN_MODELS:
        folder = models_dir / config
        found: Family | None = BUILTIN_MODELS[config]
    elif Path(config).expanduser().is_dir():
        folder = Path(config).expanduser().resolve()
        found = family_of_folder(folder)
    else:
        snapshot = _cached_snapshot(config, models_dir / "hub") if _is_repo_id(config) else None
        if snapshot is None:
            raise ConfigurationError(
                f"checkpoint {path} needs the configs of its base model {config!r}, which are "
                f"not in {models_dir / 'hub'}; sdapi never downloads for single files: set its "
                "config to a local diffusers folder, a built-in model, or a repo id downloaded "
                "there before"
            )
        folder, found = snapshot, family_of_folder(snapshot)
    if found != family:
        what = f"of family {found}" if found else "not a diffusers pipeline folder"
        raise ConfigurationError(f"config {config!r} of {family} checkpoint {path} is {what}")
    return folder


def _default_config(path: Path, family: Family) -> str:
    kind = checkpoints.checkpoint_kind(checkpoints.tensor_names(path))
    if kind is None or checkpoints.KIND_FAMILIES[kind] != family:
        kind = checkpoints.FAMILY_KINDS[family]  # a declared family wins over the file's look
    return checkpoints.DEFAULT_CONFIGS[kind]


def registry_for(registry: Registry | None, models_dir: Path | None) -> Registry:
    return registry if registry is not None else Registry.load(default_models_file(models_dir))


def _looks_like_path(ref: str) -> bool:
    """Refs the operator meant as a path, even though "owner/name" contains a slash too."""
    return (
        ref.startswith(("/", ".", "~"))
        or "\\" in ref
        or ref.count("/") > 1
        or checkpoints.is_single_file(ref)
    )


def _is_repo_id(ref: str) -> bool:
    return bool(_REPO_ID.match(ref)) and "--" not in ref and ".." not in ref


# --- the x4 upscaler behind super_resolution ------------------------------------------------

UPSCALE_PIPELINE = "StableDiffusionUpscalePipeline"
_REPO_HINT = "stabilityai/stable-diffusion-x4-upscaler"


def check_upscaler_ref(ref: str) -> str:
    """Validate `--upscaler` without loading anything (torch-free); returns it as checked."""
    if ref == TINY_UPSCALER_ID:
        return ref
    path = Path(ref).expanduser()
    if path.is_dir():
        _check_upscaler_folder(path)
        return str(path.resolve())
    if path.exists() or ref.startswith(("/", ".", "~")) or ref.count("/") != 1:
        raise ConfigurationError(
            f"upscaler {ref!r} is neither {TINY_UPSCALER_ID}, a diffusers x4 upscaler folder, "
            f"nor a Hugging Face repo id such as {_REPO_HINT}"
        )
    return ref  # a hub repo id: checked when the worker loads it


def _check_upscaler_folder(folder: Path) -> None:
    try:
        index = json.loads((folder / MODEL_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigurationError(
            f"upscaler folder {folder} has no readable {MODEL_INDEX}: not a diffusers folder"
        ) from None
    name = index.get("_class_name") if isinstance(index, dict) else None
    if name != UPSCALE_PIPELINE:
        raise ConfigurationError(
            f"upscaler folder {folder} holds a {name}, not a {UPSCALE_PIPELINE} (the x4 upscaler)"
        )
