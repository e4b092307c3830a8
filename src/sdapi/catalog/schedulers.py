"""The wire's scheduler names, the diffusers schedulers behind them, and their options.

Torch-free: the API process validates `scheduler`, `use_karras_sigmas` and `algorithm_type`
with `check_scheduler_options`; the engine builds the scheduler a plan names
(sdapi.engine.schedulers).

Each name the wire spec lists was run through the text2img, img2img and inpaint pipelines of each
family with diffusers 0.42 (tests/integration/test_engine.py, test_families.py):

- SD 1.x/2.x and SDXL predict noise (epsilon or v). `SCHEDULERS` holds the names that made
  images in all three tasks, each mapped to its own class; `UNSUPPORTED` holds the rest, with the
  reason, so the API can refuse them with a clear message instead of failing the job later.
- SD3 is a flow-matching model: the noise-prediction samplers above run without an error but
  solve the wrong equation (with the tiny model, 30 steps of them land nowhere near the image
  that flow samplers converge to). Only the names with a flow-matching form apply: Euler and
  Heun through their FlowMatch classes, in every task; DPM-Solver(++) and UniPC in their
  flow-sigmas mode, for text2img only (SD3's img2img and inpaint noise the init image with
  `scale_noise`, which only the FlowMatch classes have).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sdapi.catalog.families import SD3, Family
from sdapi.jobs import Task

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

#: Wire name -> diffusers class name (SD 1.x/2.x and SDXL). Today they are the same; the mapping
#: keeps the wire free to use its own names should diffusers rename a class.
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
#: at least 4 steps and runs 3 times as many. The model's own config wins over these.
CLASS_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "PNDMScheduler": {"skip_prk_steps": True},
    }
)

#: diffusers classes that take `use_karras_sigmas`; each ran all three tasks with it and made
#: other images than without.
KARRAS_CLASSES: frozenset[str] = frozenset(
    {
        "LMSDiscreteScheduler",
        "EulerDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "DPMSolverSinglestepScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
        "FlowMatchEulerDiscreteScheduler",  # SD3's Euler
    }
)

#: `algorithm_type` values each diffusers 0.42 class implements (its constructor refuses others).
ALGORITHM_TYPES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "DPMSolverMultistepScheduler": (
            "dpmsolver",
            "dpmsolver++",
            "sde-dpmsolver",
            "sde-dpmsolver++",
        ),
        "DPMSolverSinglestepScheduler": ("dpmsolver", "dpmsolver++", "sde-dpmsolver++"),
    }
)
_ALL_ALGORITHM_TYPES = tuple(dict.fromkeys(v for vs in ALGORITHM_TYPES.values() for v in vs))
#: The first-generation solvers cannot end on sigma 0, the default final sigma diffusers
#: otherwise refuses them with; ending on the smallest trained sigma is what it asks for.
_NEEDS_SIGMA_MIN = frozenset({"dpmsolver", "sde-dpmsolver"})

# --- SD3 (flow matching) ---------------------------------------------------------------------

#: Wire names whose method diffusers has as a FlowMatch class: the same sampler, every task.
_FLOW_COUNTERPARTS: Mapping[str, str] = MappingProxyType(
    {
        "EulerDiscreteScheduler": "FlowMatchEulerDiscreteScheduler",
        "HeunDiscreteScheduler": "FlowMatchHeunDiscreteScheduler",
    }
)
#: Solvers with a flow-sigmas mode; measured to converge to the FlowMatch Euler image.
_FLOW_MODE_SOLVERS = frozenset(
    {"DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler"}
)
_FLOW_MODE: Mapping[str, Any] = MappingProxyType(
    {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
)
#: In flow mode: "dpmsolver" lacks flow_prediction, and the SDE variants draw noise at every step
#: from the global RNG (SD3 pipelines give the scheduler no generator): not reproducible.
_FLOW_ALGORITHM_TYPES = ("dpmsolver++",)
_NOT_FLOW = "it samples noise-predicting (epsilon/v) models, and sd3 models are flow-matching"
#: Why the other wire names do not apply to SD3, where the reason is not just `_NOT_FLOW`.
_NOT_FOR_SD3: Mapping[str, str] = MappingProxyType(
    {
        "DEISMultistepScheduler": "its flow-sigmas mode converges far slower than the other"
        " solvers' in diffusers 0.42 (measured)",
        "LCMScheduler": "its flow-matching form adds fresh noise at every step from the global"
        " RNG (SD3 pipelines give the scheduler no generator), so images would not follow"
        " the seed",
    }
)


@dataclass(frozen=True, slots=True)
class SchedulerPlan:
    """What `make_scheduler` builds: a diffusers class, and settings over the model's config."""

    class_name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: How error messages name it: the wire name, or "the model's default scheduler".
    label: str = ""


def is_supported(name: str) -> bool:
    """Whether `name` makes images with SD 1.x/2.x and SDXL models (see `supported_schedulers`)."""
    return name in SCHEDULERS


def supported_schedulers(family: Family | None, task: Task | None = None) -> frozenset[str]:
    """The wire names that make images with `family`'s models: in `task`, or in every task.

    Unknown families (None) get the SD rules, as before families existed.
    """
    if family != SD3:
        return frozenset(SCHEDULERS)
    names = set(_FLOW_COUNTERPARTS)
    if task is Task.TEXT2IMG:
        names |= _FLOW_MODE_SOLVERS
    return frozenset(names)


def check_scheduler_options(
    name: str | None,
    family: Family | None = None,
    use_karras_sigmas: bool = False,
    algorithm_type: str | None = None,
    *,
    task: Task | None = None,
    default_class: str | None = None,
) -> str | None:
    """Why a request's scheduler settings cannot run on a `family` model, or None if they can.

    Torch-free, for the API to refuse a request before it is queued. `name` None is the model's
    default scheduler: pass its class (model_index.json's "scheduler" entry) as `default_class`
    to check the options against it; unknown, only the algorithm_type value is checked here and
    the worker checks the rest. `task` None asks for settings that work in every task.
    """
    if name is None and default_class is None:
        return _unknown_algorithm(algorithm_type)
    try:
        plan_scheduler(
            name,
            family,
            task,
            use_karras_sigmas=use_karras_sigmas,
            algorithm_type=algorithm_type,
            default_class=default_class,
        )
    except ValueError as exc:
        return str(exc)
    return None


def plan_scheduler(
    name: str | None,
    family: Family | None,
    task: Task | None,
    *,
    use_karras_sigmas: bool = False,
    algorithm_type: str | None = None,
    default_class: str | None = None,
) -> SchedulerPlan:
    """The class and settings for a request; ValueError, naming what is wrong, if it cannot run."""
    if name is None:
        if default_class is None:
            raise ValueError("no scheduler named and the model's default is unknown")
        plan = SchedulerPlan(default_class, label=f"the model's default scheduler {default_class}")
    else:
        plan = _wire_plan(name, family, task)
    settings = dict(plan.settings)
    if use_karras_sigmas:
        _check_karras(plan, family)
        settings["use_karras_sigmas"] = True
    if algorithm_type is not None:
        settings |= _algorithm_settings(plan, algorithm_type, family)
    return SchedulerPlan(plan.class_name, MappingProxyType(settings), plan.label)


def _wire_plan(name: str, family: Family | None, task: Task | None) -> SchedulerPlan:
    if name not in SCHEDULERS:
        reason = UNSUPPORTED.get(name, "unknown scheduler")
        raise ValueError(f"scheduler {name!r} is not supported: {reason}")
    if family != SD3:
        return SchedulerPlan(SCHEDULERS[name], label=name)
    if name in _FLOW_COUNTERPARTS:
        return SchedulerPlan(_FLOW_COUNTERPARTS[name], label=name)
    if name in _FLOW_MODE_SOLVERS and task is Task.TEXT2IMG:
        return SchedulerPlan(SCHEDULERS[name], _FLOW_MODE, label=name)
    if name in _FLOW_MODE_SOLVERS:
        raise ValueError(
            f"scheduler {name!r} runs only text2img on sd3 models: their img2img and inpaint"
            " need a flow-matching scheduler (EulerDiscreteScheduler, HeunDiscreteScheduler)"
        )
    reason = _NOT_FOR_SD3.get(name, _NOT_FLOW)
    usable = ", ".join(sorted(supported_schedulers(SD3, task)))
    raise ValueError(f"scheduler {name!r} does not apply to sd3 models: {reason}; use {usable}")


def _check_karras(plan: SchedulerPlan, family: Family | None) -> None:
    if plan.settings.get("use_flow_sigmas"):
        raise ValueError(
            f"use_karras_sigmas does not work with {plan.label}{_on(family)}: with its flow"
            " sigmas, Karras sigmas give black images (diffusers 0.42, measured)"
        )
    if plan.class_name not in KARRAS_CLASSES:
        runs_as = "" if plan.class_name in plan.label else f" (it runs as {plan.class_name})"
        raise ValueError(
            f"use_karras_sigmas does not apply to {plan.label}{_on(family)}{runs_as}: it has no"
            f" Karras sigmas; schedulers with them: {', '.join(_karras_names(family))}"
        )


def _karras_names(family: Family | None) -> list[str]:
    """The wire names whose class (for this family) takes Karras sigmas."""
    names = []
    for name in sorted(supported_schedulers(family, Task.TEXT2IMG)):
        plan = _wire_plan(name, family, Task.TEXT2IMG)
        if plan.class_name in KARRAS_CLASSES and not plan.settings.get("use_flow_sigmas"):
            names.append(name)
    return names


def _algorithm_settings(
    plan: SchedulerPlan, algorithm_type: str, family: Family | None
) -> dict[str, Any]:
    if message := _unknown_algorithm(algorithm_type):
        raise ValueError(message)
    accepted = ALGORITHM_TYPES.get(plan.class_name)
    if accepted is None:
        raise ValueError(
            f"algorithm_type applies only to {' and '.join(ALGORITHM_TYPES)}, not to {plan.label}"
        )
    if plan.settings.get("use_flow_sigmas"):
        accepted = _FLOW_ALGORITHM_TYPES
    if algorithm_type not in accepted:
        raise ValueError(
            f"{plan.label} does not take algorithm_type {algorithm_type!r}{_on(family)};"
            f" it takes {', '.join(accepted)}"
        )
    settings: dict[str, Any] = {"algorithm_type": algorithm_type}
    if algorithm_type in _NEEDS_SIGMA_MIN:
        settings["final_sigmas_type"] = "sigma_min"
    return settings


def _on(family: Family | None) -> str:
    return f" on {family} models" if family is not None else ""


def _unknown_algorithm(algorithm_type: str | None) -> str | None:
    """The error for a value no scheduler knows (with a likely fix for typos), else None."""
    if algorithm_type is None or algorithm_type in _ALL_ALGORITHM_TYPES:
        return None
    close = difflib.get_close_matches(algorithm_type, _ALL_ALGORITHM_TYPES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"algorithm_type {algorithm_type!r} is unknown{hint};"
        f" diffusers knows {', '.join(_ALL_ALGORITHM_TYPES)}"
    )
