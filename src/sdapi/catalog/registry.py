"""The model registry: the models an operator declared, each under the `model_id` clients send.

A registry is one TOML file (`<data-dir>/models.toml` unless `--models-file` moves it), one
`[models.<id>]` table per model:

    [models.dreamshaper]
    source = "/srv/models/dreamshaper_8.safetensors"   # or a diffusers folder, or owner/name
    family = "sd"                                      # sd, sdxl or sd3; detected when left out
    config = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # single files only: the base model
    name = "DreamShaper 8"
    description = "General purpose, painterly"

    [models.dreamshaper.defaults]                      # what a request leaves out
    width = 512
    height = 768
    steps = 25
    guidance_scale = 7.0
    scheduler = "DPMSolverMultistepScheduler"
    negative_prompt = "blurry, low quality"

The built-in tiny models are always there as implicit entries. A reference that is no registry
id (a folder, a checkpoint file, a hub repo id) still works wherever a model is named: `resolve`
gives it an entry of its own. Torch-free: the API imports this module. Every mistake in the file
is one `ConfigurationError` line naming the file and the model.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from sdapi.catalog.builtins import BUILTIN_MODELS
from sdapi.catalog.families import FAMILIES, Family, size_multiple
from sdapi.catalog.schedulers import check_scheduler_options
from sdapi.catalog.vaes import parse_vae
from sdapi.errors import ConfigurationError

#: The file's name in the data directory unless `--models-file` says otherwise.
MODELS_FILE_NAME: Final = "models.toml"
#: Where `sdapi serve` and `sdapi worker` publish the registry file to the code that loads models
#: (an Engine knows only its models directory; see `default_models_file`).
MODELS_FILE_ENV: Final = "SDAPI_MODELS_FILE"
#: model ids: what clients send as `model_id`, so no slashes (never mistaken for a path or a
#: hub repo id) and no spaces.
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", re.ASCII)
#: TOML bare keys; other ids are written quoted.
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$", re.ASCII)
_HEADER = "# sdapi model registry: one [models.<id>] table per model (`sdapi models --help`).\n"
_BUILTIN_DESCRIPTIONS: Final[Mapping[Family, str]] = {
    "sd": "Built-in tiny Stable Diffusion 1.x model (random weights: its images are noise)",
    "sdxl": "Built-in tiny SDXL model (random weights: its images are noise)",
    "sd3": "Built-in tiny SD3 model (random weights: its images are noise)",
}


@dataclass(frozen=True)
class Defaults:
    """Request defaults of one model: what a request that leaves a field out gets (None: the
    server's own default). `steps` is the wire's `num_inference_steps`."""

    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    negative_prompt: str | None = None
    #: A VAE installed in the models folder's vae/ (sdapi.catalog.vaes), e.g. the fine-tuned
    #: stabilityai/sd-vae-ft-mse many SD 1.5 models are meant to be decoded with.
    vae: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The defaults that are set, by field name."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class ModelEntry:
    """One model: `id` is the model_id clients send; `source` what the worker loads."""

    id: str
    source: str
    #: "sd", "sdxl", "sd3", or None to detect it from the source.
    family: Family | None = None
    #: For single-file checkpoints: the diffusers folder, hub repo id (already in the cache) or
    #: built-in model whose configs (scheduler, tokenizers, component shapes) the file lacks.
    config: str | None = None
    #: `model_name` in model_list; the id when empty.
    name: str = ""
    description: str = ""
    #: Trigger words a fine-tuned model was trained with (model_list's `instance_prompt`).
    instance_prompt: str = ""
    #: An example image URL (model_list's `screenshots`).
    screenshots: str = ""
    #: When `sdapi models add` declared it (ISO 8601, UTC), or None.
    created_at: str | None = None
    defaults: Defaults = field(default_factory=Defaults)
    #: One of the built-in tiny models (implicit, not in the file).
    builtin: bool = False
    #: Not declared anywhere: a folder, file or repo id named directly (`--model /path`).
    adhoc: bool = False

    @property
    def display_name(self) -> str:
        return self.name or self.id


#: Keys of a [models.<id>] table -> their type; `defaults` is a table of its own.
_ENTRY_KEYS: Final[Mapping[str, type]] = {
    "source": str,
    "family": str,
    "config": str,
    "name": str,
    "description": str,
    "instance_prompt": str,
    "screenshots": str,
    "created_at": str,
}
_DEFAULT_KEYS: Final[Mapping[str, tuple[type, ...]]] = {
    "width": (int,),
    "height": (int,),
    "steps": (int,),
    "guidance_scale": (int, float),
    "scheduler": (str,),
    "negative_prompt": (str,),
    "vae": (str,),
}


class Registry:
    """The declared models (in file order) plus the built-in ones; immutable once made."""

    def __init__(self, entries: Iterable[ModelEntry] = (), path: Path | None = None) -> None:
        #: The file it was read from (or will be saved to); None for an in-memory registry.
        self.path = path
        self._entries: dict[str, ModelEntry] = {}
        for entry in entries:
            _check_new_id(entry.id, self._entries, where=_where(path))
            self._entries[entry.id] = entry

    @classmethod
    def load(cls, path: Path | None) -> Registry:
        """The registry in `path`; empty when the file does not exist (or `path` is None)."""
        if path is None:
            return cls()
        path = Path(path).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path=path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read model registry {path}: {exc}") from None
        return cls(parse(text, path), path)

    # --- lookups -------------------------------------------------------------------------------

    @property
    def declared(self) -> tuple[ModelEntry, ...]:
        """The entries of the file, in its order."""
        return tuple(self._entries.values())

    def __iter__(self) -> Iterator[ModelEntry]:
        """Declared entries, then the built-in ones."""
        yield from self._entries.values()
        for model_id in BUILTIN_MODELS:
            yield builtin_entry(model_id)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._entries or model_id in BUILTIN_MODELS

    def get(self, model_id: str) -> ModelEntry | None:
        """The declared or built-in entry called `model_id`, else None."""
        if model_id in self._entries:
            return self._entries[model_id]
        return builtin_entry(model_id) if model_id in BUILTIN_MODELS else None

    def resolve(self, ref: str) -> ModelEntry:
        """The entry for `ref`: a registry id or built-in model, or else an entry of its own
        whose source is `ref` itself (a folder, a checkpoint file or a hub repo id; validated
        when it is loaded or checked, not here)."""
        return self.get(ref) or ModelEntry(id=ref, source=ref, adhoc=True)

    def defaults_for(self, model_id: str) -> Defaults:
        """Request defaults for `model_id` (all None for models without any)."""
        entry = self.get(model_id)
        return entry.defaults if entry is not None else Defaults()

    def model_list(self, served: Sequence[str]) -> list[dict[str, Any]]:
        """The v4 `model_list` answer for the served models, in their order (the default
        first): a JSON array in the spec's shape (section 9)."""
        return [model_list_item(self.resolve(ref)) for ref in served]

    # --- changes (a new Registry each; `save` writes one) -------------------------------------

    def with_entry(self, entry: ModelEntry) -> Registry:
        """This registry plus `entry`; ConfigurationError when its id is taken or invalid."""
        check_entry(entry, _where(self.path))
        return Registry([*self._entries.values(), entry], self.path)

    def without(self, model_id: str) -> Registry:
        """This registry less `model_id`; ConfigurationError when it is not declared."""
        if model_id in BUILTIN_MODELS:
            raise ConfigurationError(f"model {model_id!r} is built in: it cannot be removed")
        if model_id not in self._entries:
            raise ConfigurationError(f"model {model_id!r} is not declared in {_where(self.path)}")
        return Registry([e for e in self._entries.values() if e.id != model_id], self.path)

    def save(self, path: Path | None = None) -> Path:
        """Write the file (atomically). Tables of models already in the file keep their text,
        comments included, where the change allows; otherwise the whole file is rewritten."""
        path = Path(path or self.path or MODELS_FILE_NAME).expanduser()
        try:
            old = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            old = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read model registry {path}: {exc}") from None
        _write_atomically(path, _new_text(old, self.declared))
        return path


# --- the implicit and the wire entries ---------------------------------------------------------


def builtin_entry(model_id: str) -> ModelEntry:
    family = BUILTIN_MODELS[model_id]
    return ModelEntry(
        id=model_id,
        source=model_id,
        family=family,
        description=_BUILTIN_DESCRIPTIONS[family],
        builtin=True,
    )


def model_list_item(entry: ModelEntry) -> dict[str, Any]:
    """One item of model_list, with the keys of the spec's example. `status` is always
    "model_ready": workers load a served model on demand, so every served model can run."""
    return {
        "model_id": entry.id,
        "status": "model_ready",
        "created_at": entry.created_at,
        "instance_prompt": entry.instance_prompt,
        "model_name": entry.display_name,
        "description": entry.description,
        "screenshots": entry.screenshots,
    }


def default_models_file(models_dir: Path | None = None) -> Path | None:
    """The registry file for code that is handed no registry (an Engine loading its model):
    $SDAPI_MODELS_FILE, which `sdapi serve` and `sdapi worker` set from their settings, else
    `models.toml` beside the models directory (`<data-dir>/models.toml` for the usual
    `<data-dir>/models`), else None (built-in models only)."""
    if named := os.environ.get(MODELS_FILE_ENV, "").strip():
        return Path(named).expanduser()
    return Path(models_dir).parent / MODELS_FILE_NAME if models_dir is not None else None


# --- reading -----------------------------------------------------------------------------------


def parse(text: str, path: Path | None = None) -> list[ModelEntry]:
    """The entries of a registry file's text; ConfigurationError naming what is wrong."""
    where = _where(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message names the line, and a second [models.x] ("Cannot declare ... twice").
        raise ConfigurationError(f"{where} is not valid TOML: {exc}") from None
    if extra := sorted(set(data) - {"models"}):
        raise ConfigurationError(
            f"{where}: unknown top-level key {extra[0]!r} (only [models.<id>])"
        )
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigurationError(f"{where}: `models` must be tables: [models.<id>]")
    entries: dict[str, ModelEntry] = {}
    for model_id, table in models.items():
        entry = _entry(model_id, table, where)
        _check_new_id(model_id, entries, where)
        entries[model_id] = entry
    return list(entries.values())


def _entry(model_id: str, table: object, where: str) -> ModelEntry:
    what = f"{where}: model {model_id!r}"
    if not isinstance(table, dict):
        raise ConfigurationError(f"{what} must be a table ([models.{_key(model_id)}])")
    known = {**_ENTRY_KEYS, "defaults": dict}
    for key, value in table.items():
        if key not in known:
            raise ConfigurationError(f"{what}: unknown key {key!r} (known: {', '.join(known)})")
        if not isinstance(value, known[key]):
            raise ConfigurationError(f"{what}: {key} must be a {_type_name(known[key])}")
    values = {k: v for k, v in table.items() if k != "defaults"}
    entry = ModelEntry(id=model_id, **{"source": "", **values})
    entry = replace(entry, defaults=_defaults(table.get("defaults", {}), what))
    check_entry(entry, where)
    return entry


def _defaults(table: Mapping[str, Any], what: str) -> Defaults:
    for key, value in table.items():
        if key not in _DEFAULT_KEYS:
            raise ConfigurationError(
                f"{what}: unknown default {key!r} (known: {', '.join(_DEFAULT_KEYS)})"
            )
        # bool is an int to Python, never a width to us.
        if isinstance(value, bool) or not isinstance(value, _DEFAULT_KEYS[key]):
            raise ConfigurationError(
                f"{what}: defaults.{key} must be a {_type_name(_DEFAULT_KEYS[key][-1])}"
            )
    return Defaults(**table)


# --- validation (of the file, and of what `sdapi models add` is given) -------------------------


def check_entry(entry: ModelEntry, where: str = "the model registry") -> None:
    """ConfigurationError when `entry` cannot be declared: bad id, no source, unknown family,
    impossible defaults. Whether the source exists is for `sdapi.engine.models` to check."""
    what = f"{where}: model {entry.id!r}"
    if not _MODEL_ID.match(entry.id):
        raise ConfigurationError(
            f"{what}: a model id is 1-64 letters, digits, '.', '_' or '-', starting with a letter"
            " or digit (clients send it as model_id)"
        )
    if entry.id in BUILTIN_MODELS:
        raise ConfigurationError(f"{what}: that id is a built-in model's")
    if not entry.source.strip():
        raise ConfigurationError(
            f"{what} has no source (a folder, .safetensors file or owner/name)"
        )
    if entry.family is not None and entry.family not in FAMILIES:
        raise ConfigurationError(
            f"{what}: unknown family {entry.family!r} (known: {', '.join(FAMILIES)})"
        )
    if problem := _defaults_problem(entry.defaults, entry.family):
        raise ConfigurationError(f"{what}: {problem}")


def _defaults_problem(defaults: Defaults, family: Family | None) -> str | None:
    multiple = size_multiple(family)
    for name in ("width", "height", "steps"):
        value = getattr(defaults, name)
        if value is not None and value < 1:
            return f"defaults.{name} must be at least 1"
        if name != "steps" and value is not None and value % multiple:
            return f"defaults.{name} must be a multiple of {multiple} ({family or 'sd'} models)"
    guidance = defaults.guidance_scale
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        return "defaults.guidance_scale must be a number from 0 up"
    # Checked for every task: a default img2img cannot run would refuse every img2img request.
    if defaults.scheduler is not None and (
        problem := check_scheduler_options(defaults.scheduler, family)
    ):
        return f"defaults.scheduler: {problem}"
    try:  # whether it is installed is checked per request, as a request's own vae is
        parse_vae(defaults.vae)
    except ValueError as exc:
        return f"defaults.vae: {exc}"
    return None


def _check_new_id(model_id: str, taken: Mapping[str, ModelEntry], where: str) -> None:
    # Ids differing only in case would be a trap for clients typing them; refuse the second.
    for other in taken:
        if other.lower() == model_id.lower():
            raise ConfigurationError(f"{where}: duplicate model id {model_id!r} ({other!r})")


# --- writing -----------------------------------------------------------------------------------


def format_entry(entry: ModelEntry) -> str:
    """The TOML tables of one entry (no trailing blank line)."""
    lines = [f"[models.{_key(entry.id)}]", f"source = {_value(entry.source)}"]
    optional = {
        "family": entry.family,
        "config": entry.config,
        "name": entry.name,
        "description": entry.description,
        "instance_prompt": entry.instance_prompt,
        "screenshots": entry.screenshots,
        "created_at": entry.created_at,
    }
    lines += [f"{key} = {_value(value)}" for key, value in optional.items() if value]
    if defaults := entry.defaults.as_dict():
        lines += ["", f"[models.{_key(entry.id)}.defaults]"]
        lines += [f"{key} = {_value(value)}" for key, value in defaults.items()]
    return "\n".join(lines) + "\n"


def format_registry(entries: Iterable[ModelEntry]) -> str:
    return _HEADER + "".join(f"\n{format_entry(entry)}" for entry in entries)


def _key(model_id: str) -> str:
    return model_id if _BARE_KEY.match(model_id) else _value(model_id)


def _value(value: str | float) -> str:
    if isinstance(value, str):
        # A JSON string is a TOML basic string once DEL (legal raw in JSON only) is escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    return repr(value)  # ints, and floats as Python writes them ("7.0", "1e-05"): valid TOML


def _new_text(old: str, entries: Sequence[ModelEntry]) -> str:
    """The file's new text: the old one with tables appended or cut out when that gives exactly
    `entries` (so the operator's comments and layout stay), else a fresh rendering."""
    if not old.strip():
        return format_registry(entries)
    try:
        before = {e.id: e for e in parse(old)}
    except ConfigurationError:
        return format_registry(entries)
    text = old
    for model_id in set(before) - {e.id for e in entries}:
        text = _cut_tables(text, model_id)
    for entry in entries:
        if entry.id not in before:
            text = text.rstrip("\n") + "\n\n" + format_entry(entry)
    try:
        if parse(text) == list(entries):
            return text
    except ConfigurationError:
        pass
    return format_registry(entries)


def _cut_tables(text: str, model_id: str) -> str:
    """`text` without the [models.<id>] table and its sub-tables (up to the next table)."""
    kept: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        # Only header lines switch tables (a line of a multi-line array starts with "[" too).
        if line.lstrip().startswith("[") and (path := _table_path(line)):
            inside = path[:2] == ("models", model_id)
        if not inside:
            kept.append(line)
    return "".join(kept)


def _table_path(line: str) -> tuple[str, ...]:
    """The key path of a `[a.b.c]` header line (parsed by tomllib itself: quoting and spaces
    are TOML's business); () for anything else."""
    try:
        node: Any = tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return ()
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        path.append(key)
        if isinstance(node, list):  # [[array.of.tables]]
            node = node[0] if node else {}
    return tuple(path)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write model registry {path}: {exc}") from None


def _where(path: Path | None) -> str:
    return str(path) if path is not None else "the model registry"


def _type_name(kind: type) -> str:
    return {str: "string", int: "whole number", float: "number", dict: "table"}[kind]
