"""The wire's scheduler names and the diffusers scheduler classes behind them.

Torch-free at import: the API process validates `scheduler` against these names and must not
pay for torch. Only `make_scheduler` imports diffusers, when a worker calls it.

Each name the wire spec lists was run through the Stable Diffusion text2img, img2img and inpaint
pipelines with diffusers 0.42. `SCHEDULERS` holds those that produced images in all three;
`UNSUPPORTED` holds the rest, with the reason, so the API can refuse them with a clear message
instead of failing the job later.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

_SUPPORTED = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",  # needs scipy (in the `engine` extra)
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "LCMScheduler",
)

#: Wire name -> diffusers class name. Today they are the same; the mapping keeps the wire free
#: to use its own names should diffusers rename a class.
SCHEDULERS: Mapping[str, str] = MappingProxyType({name: name for name in _SUPPORTED})

#: Wire names that cannot make images through the SD pipelines -> why.
UNSUPPORTED: Mapping[str, str] = MappingProxyType(
    {
        "DDIMInverseScheduler": "inversion only: it maps images to noise, not noise to images",
        "IPNDMScheduler": "cannot start from an init image (no add_noise): img2img/inpaint fail",
        "KarrasVeScheduler": "deprecated, for unconditional pixel models: SD cannot drive it",
        "ScoreSdeVeScheduler": "score-SDE sampler for unconditional pixel models, not SD latents",
    }
)

#: Settings a class needs when its config comes from another class's (the model's usual case).
#: PNDM: Stable Diffusion ships it with the PRK warm-up skipped (PLMS); with the warm-up it needs
#: at least 4 steps and runs 3 times as many.
_CLASS_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "PNDMScheduler": {"skip_prk_steps": True},
    }
)


def is_supported(name: str) -> bool:
    return name in SCHEDULERS


def make_scheduler(name: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """A new scheduler `name` configured like `base_config` (the model's own scheduler config).

    Starting from the model's config keeps its noise schedule (betas, timestep spacing, ...);
    keys the target class does not know are ignored by diffusers. The model's config wins over
    `_CLASS_DEFAULTS`: a model that ships PNDM with the warm-up keeps it.
    """
    if name not in SCHEDULERS:
        reason = UNSUPPORTED.get(name, "unknown scheduler")
        raise ValueError(f"scheduler {name!r} is not supported: {reason}")
    import diffusers

    scheduler_class = getattr(diffusers, SCHEDULERS[name])
    return scheduler_class.from_config({**_CLASS_DEFAULTS.get(name, {}), **base_config})
