"""`clip_skip`: which layer of the CLIP text encoder conditions the image.

The wire counts like A1111 and the hosted API: 1 (the default) is the normal last layer, 2 the one
before it, and so on up to 8. diffusers counts the layers *skipped*: its `clip_skip=1` is the wire's
2, and None is the wire's 1. SD 1.x/2.x, SDXL and SD3 pipelines all take it (SDXL and SD3 start
from their usual penultimate layer and skip further back from there).

The API validates the value (sdapi.catalog.options); `diffusers_clip_skip` checks it against the
loaded pipeline's text encoders.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Final

from diffusers import DiffusionPipeline

from sdapi.catalog.families import SD, Family
from sdapi.engine.signatures import accepts

MIN_CLIP_SKIP: Final = 1
MAX_CLIP_SKIP: Final = 8


def check_clip_skip(clip_skip: int | None) -> str | None:
    """Why `clip_skip` is not acceptable, or None (None means the default, 1)."""
    if clip_skip is None:
        return None
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int):
        return f"clip_skip must be a whole number (got {clip_skip!r})"
    if not MIN_CLIP_SKIP <= clip_skip <= MAX_CLIP_SKIP:
        return f"clip_skip must be between {MIN_CLIP_SKIP} and {MAX_CLIP_SKIP} (got {clip_skip})"
    return None


def is_default(clip_skip: int | None) -> bool:
    """True when `clip_skip` changes nothing: None or 1, the encoder's normal output."""
    return clip_skip is None or clip_skip == MIN_CLIP_SKIP


def to_diffusers(clip_skip: int | None) -> int | None:
    """The pipelines' `clip_skip` argument for a wire value (layers skipped; None for none)."""
    return None if clip_skip is None or is_default(clip_skip) else clip_skip - 1


def diffusers_clip_skip(
    pipe: DiffusionPipeline, family: Family | None, clip_skip: int | None, model: str
) -> int | None:
    """The pipeline's `clip_skip` argument for a wire value; ValueError when this model cannot
    skip so far (or at all)."""
    if problem := check_clip_skip(clip_skip):
        raise ValueError(problem)
    if is_default(clip_skip):
        return None
    if not accepts(pipe, "clip_skip"):
        raise ValueError(f"model {model} does not take clip_skip")
    skip = to_diffusers(clip_skip)
    most = _most_clip_skip(pipe, family)
    if skip is not None and skip > most:
        raise ValueError(
            f"clip_skip {clip_skip} is too deep for model {model} "
            f"(at most {most + 1}: its text encoder has too few layers)"
        )
    return skip


def _most_clip_skip(pipe: DiffusionPipeline, family: Family | None) -> int:
    """The deepest diffusers `clip_skip` the pipeline's CLIP text encoders allow.

    SD 1.x/2.x take hidden state -(skip + 1); SDXL and SD3 -(skip + 2), as they start from the
    penultimate layer. There are layers + 1 hidden states (the input embeddings first).
    """
    layers = min(
        int(encoder.config.num_hidden_layers)
        for name in ("text_encoder", "text_encoder_2")
        if (encoder := getattr(pipe, name, None)) is not None
    )
    return layers if family == SD else layers - 1


@contextlib.contextmanager
def final_norm_shim(pipe: Any, skipping: bool) -> Iterator[None]:
    """Work around diffusers reading a CLIP layer transformers removed, for one call.

    With `clip_skip`, diffusers 0.42's SD 1.x/2.x pipelines apply the text encoder's final layer
    norm as `text_encoder.text_model.final_layer_norm`, but transformers >= 5.6 flattened
    `CLIPTextModel`: the norm is `text_encoder.final_layer_norm` and `text_model` is gone, so the
    call fails (diffusers issue #14124). Meanwhile the encoder gets a plain (non-module, so not
    registered, saved or moved) `text_model` holding just that norm; nothing else reads it.
    Does nothing where the attribute exists or the call does not skip.
    """
    encoder = getattr(pipe, "text_encoder", None)
    if (
        not skipping
        or encoder is None
        or hasattr(encoder, "text_model")
        or not hasattr(encoder, "final_layer_norm")
    ):
        yield
        return
    encoder.text_model = SimpleNamespace(final_layer_norm=encoder.final_layer_norm)
    try:
        yield
    finally:
        del encoder.text_model
