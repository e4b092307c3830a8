"""Putting a request's LoRAs and embeddings on a loaded pipeline, and taking them off again.

Every call must see exactly its own LoRAs and embeddings and nothing left from an earlier one.
Loading costs file reads and model surgery, so `Adapters` keeps what it loaded and only changes
what differs from the previous call:

- LoRAs are loaded once each, as PEFT adapters of their own (diffusers' `load_lora_weights`),
  and stay loaded, least recently used dropped beyond `max_loaded`. A call activates its own
  with their weights (`set_adapters`); a call without LoRAs disables them all, which leaves the
  base layers computing exactly what they computed before any LoRA was loaded.
- Embeddings add tokens to the tokenizer and rows to the text encoder, which would change the
  meaning of any prompt containing their names. They are therefore unloaded as soon as a call
  asks for a different set (`load_textual_inversion` / `unload_textual_inversion`).

A file changed on disk (other size or modification time) is loaded again. The pipelines derived
with `from_pipe` share these modules, so one state serves every task. Torch is imported inside
the functions, as everywhere in the engine.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdapi.catalog.adapters import Lora, embedding_file, lora_file
from sdapi.catalog.families import SD3, SDXL, Family

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: LoRAs kept loaded between calls (each holds its low-rank matrices in memory).
MAX_LOADED_LORAS = 8
#: How much of a loader's message a ValueError keeps.
_MAX_REASON = 300


@dataclass(frozen=True, slots=True)
class _Loaded:
    adapter: str
    #: (size, mtime_ns) of the file when it was loaded.
    signature: tuple[int, int]


class Adapters:
    """The LoRAs and embeddings on one model's pipeline (the Engine's lock serialises calls)."""

    def __init__(self, models_dir: Path, max_loaded: int = MAX_LOADED_LORAS) -> None:
        self.models_dir = Path(models_dir)
        self.max_loaded = max_loaded
        self._next_adapter = 0
        self.reset()

    @property
    def loaded_loras(self) -> list[str]:
        """Names of the LoRAs held in memory, least recently used first."""
        return list(self._loras)

    def apply(
        self,
        pipe: DiffusionPipeline,
        family: Family | None,
        loras: tuple[Lora, ...],
        embeddings: tuple[str, ...],
    ) -> None:
        """Make `pipe` carry exactly `loras` (with their weights) and `embeddings`.

        ValueError, with a message for the client, for a file that is missing or does not fit
        this model; the next call still starts from a clean state.
        """
        self._apply_embeddings(pipe, family, tuple(sorted(embeddings)))
        # Sorted: the same set gives the same sum in the same order, whatever the request's order.
        self._apply_loras(pipe, tuple(sorted(loras)))

    def reset(self) -> None:
        """Forget everything: the pipeline it was applied to has been dropped."""
        self._loras: OrderedDict[str, _Loaded] = OrderedDict()  # least recently used first
        #: What the pipeline carries now; None when unknown (after a load or a failure).
        self._active_loras: tuple[Lora, ...] | None = ()
        self._lora_enabled: bool | None = True
        #: (name, file signature) of the loaded embeddings, and the tokens they added to each
        #: tokenizer (SDXL has two).
        self._embeddings: tuple[tuple[str, tuple[int, int]], ...] = ()
        self._added: list[list[str]] = []

    # --- LoRAs -------------------------------------------------------------------------------

    def _apply_loras(self, pipe: DiffusionPipeline, loras: tuple[Lora, ...]) -> None:
        for name, _ in loras:
            self._ensure_lora(pipe, name)
        if loras == self._active_loras:
            return
        self._active_loras = None  # unknown until this succeeds
        if not loras:
            if self._loras and self._lora_enabled is not False:
                pipe.disable_lora()  # the base layers alone: bit-identical to no LoRA at all
                self._lora_enabled = False
        else:
            if self._lora_enabled is not True:
                pipe.enable_lora()
                self._lora_enabled = True
            adapters = [self._loras[name].adapter for name, _ in loras]
            pipe.set_adapters(adapters, [weight for _, weight in loras])
        self._active_loras = loras
        self._evict(pipe, keep={name for name, _ in loras})

    def _ensure_lora(self, pipe: DiffusionPipeline, name: str) -> None:
        """Load LoRA `name` unless it is already loaded from the same file."""
        path = lora_file(self.models_dir, name)
        signature = _signature(path, "LoRA", name)
        loaded = self._loras.get(name)
        if loaded is not None and loaded.signature == signature:
            self._loras.move_to_end(name)
            return
        if loaded is not None:  # the file changed: replace the adapter
            self._drop(pipe, name)
        # A new adapter's layers start enabled and active: the state must be set again.
        self._active_loras = self._lora_enabled = None
        # PEFT adapter names cannot hold "." (they become module keys): a counter is safe.
        adapter = f"sdapi_lora_{self._next_adapter}"
        self._next_adapter += 1
        _load_lora(pipe, path, adapter, name)
        self._loras[name] = _Loaded(adapter, signature)

    def _evict(self, pipe: DiffusionPipeline, keep: set[str]) -> None:
        for name in list(self._loras):
            if len(self._loras) <= self.max_loaded:
                return
            if name not in keep:
                self._drop(pipe, name)

    def _drop(self, pipe: DiffusionPipeline, name: str) -> None:
        loaded = self._loras.pop(name)
        with _quiet_peft():
            pipe.delete_adapters([loaded.adapter])

    # --- embeddings --------------------------------------------------------------------------

    def _apply_embeddings(
        self, pipe: DiffusionPipeline, family: Family | None, names: tuple[str, ...]
    ) -> None:
        if names and (family == SD3 or not hasattr(pipe, "load_textual_inversion")):
            raise ValueError(f"{family or 'this'} models do not take textual-inversion embeddings")
        paths = [embedding_file(self.models_dir, name) for name in names]
        wanted = tuple(
            (name, _signature(path, "embedding", name))
            for name, path in zip(names, paths, strict=True)
        )
        if wanted == self._embeddings:
            return
        self._unload_embeddings(pipe, family)
        towers = _text_towers(pipe, family)
        before = [set(tokenizer.added_tokens_encoder) for tokenizer, _ in towers]
        try:
            for name, path in zip(names, paths, strict=True):
                _load_embedding(pipe, towers, path, name)
        except Exception:
            self._added = _added_since(towers, before)  # a failed load may have reached one
            self._unload_embeddings(pipe, family)  # encoder of SDXL's two
            raise
        self._added = _added_since(towers, before)
        self._embeddings = wanted

    def _unload_embeddings(self, pipe: DiffusionPipeline, family: Family | None) -> None:
        """Take the loaded embeddings' tokens out of the tokenizers and text encoders."""
        self._embeddings = ()
        added, self._added = self._added, []
        for (tokenizer, encoder), tokens in zip(_text_towers(pipe, family), added, strict=False):
            if tokens:
                pipe.unload_textual_inversion(tokens, tokenizer=tokenizer, text_encoder=encoder)


def _added_since(towers: list[tuple[Any, Any]], before: list[set[str]]) -> list[list[str]]:
    """Per tokenizer, the tokens added since `before`: exactly the embeddings' (a multi-vector
    one adds `name`, `name_1`, ...), never tokens the model came with."""
    return [
        [token for token in tokenizer.added_tokens_encoder if token not in old]
        for (tokenizer, _), old in zip(towers, before, strict=True)
    ]


def _signature(path: Path, kind: str, name: str) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        raise ValueError(f"{kind} {name!r} is not installed on this server") from None
    return (stat.st_size, stat.st_mtime_ns)


def _load_lora(pipe: DiffusionPipeline, path: Path, adapter: str, name: str) -> None:
    """Load one LoRA file as PEFT adapter `adapter`; ValueError when it does not fit."""
    try:
        with _quiet_peft(), _peft_text_encoders(pipe):
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
        loaded = any(adapter in names for names in pipe.get_list_adapters().values())
    except Exception as exc:
        _forget(pipe, adapter)
        raise ValueError(f"LoRA {name!r} does not fit this model: {_reason(exc)}") from exc
    if not loaded:  # diffusers only warns when no key matches any layer
        raise ValueError(f"LoRA {name!r} has no weights for this model's layers")


def _forget(pipe: DiffusionPipeline, adapter: str) -> None:
    """Remove whatever a failed load left of `adapter`."""
    with contextlib.suppress(Exception), _quiet_peft():
        pipe.delete_adapters([adapter])


def _load_embedding(
    pipe: DiffusionPipeline, towers: list[tuple[Any, Any]], path: Path, name: str
) -> None:
    """Add embedding `name` (its trigger word) to each text encoder; ValueError if it cannot."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"embedding {name!r} cannot be read: {_reason(exc)}") from exc
    vectors = _embedding_vectors(tensors, len(towers), name)
    try:
        for (tokenizer, encoder), vector in zip(towers, vectors, strict=True):
            pipe.load_textual_inversion(
                vector, token=name, tokenizer=tokenizer, text_encoder=encoder
            )
    except Exception as exc:
        raise ValueError(f"embedding {name!r} does not fit this model: {_reason(exc)}") from exc


def _embedding_vectors(tensors: dict[str, Any], towers: int, name: str) -> list[Any]:
    """The vectors for each text encoder: SDXL files hold `clip_l` and `clip_g`, others one."""
    if towers == 2:
        if set(tensors) != {"clip_l", "clip_g"}:
            raise ValueError(f"embedding {name!r} is not an SDXL embedding (clip_l and clip_g)")
        return [tensors["clip_l"], tensors["clip_g"]]
    if len(tensors) != 1:
        raise ValueError(
            f"embedding {name!r} holds {len(tensors)} tensors; expected one "
            "(diffusers or A1111 format)"
        )
    return list(tensors.values())


def _text_towers(pipe: DiffusionPipeline, family: Family | None) -> list[tuple[Any, Any]]:
    """The (tokenizer, CLIP text encoder) pairs embeddings go into: SDXL has two."""
    towers = [(pipe.tokenizer, pipe.text_encoder)]
    if family == SDXL:
        towers.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return towers


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """PEFT warns on every second adapter ("multiple adapters") and on deletions: expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"peft\..*")
        yield


@contextlib.contextmanager
def _peft_text_encoders(pipe: DiffusionPipeline) -> Iterator[None]:
    """Let the text encoders take LoRA layers with the PEFT that is installed.

    diffusers hands a LoRA's text-encoder part to transformers' `load_adapter`, and transformers
    5 refuses to run it with a PEFT older than it was built against (PEFT 0.22 was not published
    when this was written). The same job is two public PEFT calls, done here instead for the
    duration of the load; with a PEFT that transformers accepts, its own method runs untouched.
    """
    if not _transformers_refuses_peft():
        yield
        return
    encoders = [
        module
        for name in getattr(pipe, "_lora_loadable_modules", ())
        if (module := getattr(pipe, name, None)) is not None and hasattr(module, "load_adapter")
    ]
    for encoder in encoders:
        encoder.load_adapter = _peft_load_adapter(encoder)
    try:
        yield
    finally:
        for encoder in encoders:
            del encoder.load_adapter


def _peft_load_adapter(model: Any) -> Any:
    def load_adapter(
        adapter_name: str, adapter_state_dict: dict[str, Any], peft_config: Any, **_: Any
    ) -> None:
        from peft import inject_adapter_in_model, set_peft_model_state_dict

        inject_adapter_in_model(peft_config, model, adapter_name)  # also records peft_config
        result = set_peft_model_state_dict(model, adapter_state_dict, adapter_name)
        unexpected = [key for key in result.unexpected_keys if "lora_" in key]
        if unexpected:
            raise ValueError(f"unexpected text encoder keys, e.g. {unexpected[0]}")
        model._hf_peft_config_loaded = True  # so transformers and diffusers see the adapter

    return load_adapter


def _transformers_refuses_peft() -> bool:
    from packaging.version import Version
    from transformers.integrations import peft as transformers_peft

    required = getattr(transformers_peft, "MIN_PEFT_VERSION", "0")
    return Version(metadata.version("peft")) < Version(required)


def _reason(exc: BaseException) -> str:
    """One line on why: torch's "Error(s) in loading state_dict" says what only on line two."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (" ".join(lines[:2]) or type(exc).__name__)[:_MAX_REASON]
