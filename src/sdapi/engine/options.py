"""What each generation option does to a model's pipeline calls: its effect, by option name.

The option itself (its wire fields, checks, batch-key part, cost and meta) is declared in
sdapi.catalog.options; the engine runs every call through the effects of the options a request
has on, in that module's order:

- `check` before the pipeline is chosen: ValueError for what this model cannot run (the API
  refused most of it already; a worker may serve a model the API could not look into);
- `prepare` once per batch, on the chosen pipeline: load what the calls need (a VAE);
- `inputs`: arguments of each call (`clip_skip`, SAG's scale);
- `around`: a context manager around each call (a VAE swapped in, tokens merged, ...).

An option with no effect here (LoRAs, the safety checker, the scheduler's options) is applied
by the engine's own machinery; panorama and self-attention guidance also pick the pipeline
(sdapi.engine.variants), highres_fix and upscale add the second pass (sdapi.engine.passes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from diffusers import DiffusionPipeline

from sdapi.catalog.options import OPTIONS, sag_scheduler_problem, tomesd_problem, variant_problem
from sdapi.engine import clip_skip as clip_skips
from sdapi.engine import passes, variants
from sdapi.engine.token_merging import merged_tokens
from sdapi.jobs import GenerationRequest

if TYPE_CHECKING:
    from sdapi.engine.engine import Engine


class Effect:
    """An option that changes nothing in the calls; the effects below override what they do."""

    def check(self, engine: Engine, request: GenerationRequest) -> None:
        """ValueError when the model cannot run the option, before any work."""

    def prepare(self, engine: Engine, pipe: DiffusionPipeline, request: GenerationRequest) -> None:
        """Load what the batch's calls need, before any work (ValueError when it cannot)."""

    def inputs(
        self, engine: Engine, pipe: DiffusionPipeline, request: GenerationRequest
    ) -> dict[str, Any]:
        return {}

    def around(
        self, engine: Engine, pipe: DiffusionPipeline, request: GenerationRequest
    ) -> AbstractContextManager[object]:
        return contextlib.nullcontext()


class Variant(Effect):
    """panorama and self_attention: they run on a pipeline of their own (sdapi.engine.variants,
    which `Engine` picks by `variants.variant_of`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def check(self, engine: Engine, request: GenerationRequest) -> None:
        if problem := variant_problem(self.name, engine.family, request.task):
            raise ValueError(f"model {engine.model}: {problem}")

    def inputs(
        self, engine: Engine, pipe: DiffusionPipeline, request: GenerationRequest
    ) -> dict[str, Any]:
        return variants.variant_inputs(self.name)


class SelfAttention(Variant):
    def check(self, engine: Engine, request: GenerationRequest) -> None:
        super().check(engine, request)
        scheduler = type(engine.scheduler_for(request)).__name__
        if problem := sag_scheduler_problem(scheduler):
            raise ValueError(f"model {engine.model}: {problem}")


class SecondPass(Effect):
    """highres_fix and upscale: the refining img2img pass must take the request's scheduler."""

    def check(self, engine: Engine, request: GenerationRequest) -> None:
        engine.scheduler_for(passes.refining(request))


class Vae(Effect):
    def prepare(self, engine: Engine, pipe: DiffusionPipeline, request: GenerationRequest) -> None:
        assert request.vae is not None  # the effect of a VAE that is on
        engine.vaes.get(request.vae, pipe.vae)  # loads it, or refuses it, before the work

    def around(
        self, engine: Engine, pipe: DiffusionPipeline, request: GenerationRequest
    ) -> AbstractContextManager[object]:
        return engine.vaes.using(pipe, request.vae)


class Tomesd(Effect):
    def check(self, engine: Engine, request: GenerationRequest) -> None:
        if problem := tomesd_problem(engine.family):
            raise ValueError(f"model {engine.model}: {problem}")

    def around(
        self, engine: Engine, pipe: DiffusionPipeline, request: GenerationRequest
    ) -> AbstractContextManager[object]:
        return merged_tokens(pipe, True)


class ClipSkip(Effect):
    def prepare(self, engine: Engine, pipe: DiffusionPipeline, request: GenerationRequest) -> None:
        self.inputs(engine, pipe, request)  # refuses a clip_skip too deep before any work

    def inputs(
        self, engine: Engine, pipe: DiffusionPipeline, request: GenerationRequest
    ) -> dict[str, Any]:
        skip = clip_skips.diffusers_clip_skip(pipe, engine.family, request.clip_skip, engine.model)
        return {"clip_skip": skip}

    def around(
        self, engine: Engine, pipe: DiffusionPipeline, request: GenerationRequest
    ) -> AbstractContextManager[object]:
        return clip_skips.final_norm_shim(pipe, True)


EFFECTS: Mapping[str, Effect] = {
    "panorama": Variant("panorama"),
    "self_attention": SelfAttention("self_attention"),
    "highres_fix": SecondPass(),
    "upscale": SecondPass(),
    "vae": Vae(),
    "tomesd": Tomesd(),
    "clip_skip": ClipSkip(),
}


def effects_of(request: GenerationRequest) -> list[Effect]:
    """The effects of the options `request` has on, in sdapi.catalog.options' order."""
    return [
        EFFECTS[option.name]
        for option in OPTIONS
        if option.name in EFFECTS and option.is_on(getattr(request, option.name))
    ]
