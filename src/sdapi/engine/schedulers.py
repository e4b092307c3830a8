"""Building the diffusers scheduler a request's plan names (sdapi.catalog.schedulers plans and
checks them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import diffusers
from diffusers import SchedulerMixin

from sdapi.catalog.families import Family
from sdapi.catalog.schedulers import CLASS_DEFAULTS, plan_scheduler
from sdapi.jobs import Task


def make_scheduler(
    name: str | None,
    base_config: Mapping[str, Any],
    *,
    family: Family | None = None,
    task: Task | None = None,
    use_karras_sigmas: bool = False,
    algorithm_type: str | None = None,
) -> SchedulerMixin:
    """A new scheduler configured like `base_config` (the model's own scheduler config).

    `name` None means the model's default class (`base_config`'s `_class_name`). Starting from
    the model's config keeps its noise schedule (betas, timestep spacing, flow shift, ...); keys
    the target class does not know are ignored by diffusers. The model's config wins over
    `CLASS_DEFAULTS` (a model that ships PNDM with the warm-up keeps it); the request's options
    win over both.
    """
    plan = plan_scheduler(
        name,
        family,
        task,
        use_karras_sigmas=use_karras_sigmas,
        algorithm_type=algorithm_type,
        default_class=base_config.get("_class_name"),
    )
    settings = dict(plan.settings)
    if settings.get("use_flow_sigmas"):
        # The flow solvers call the model's `shift` flow_shift; without it they sample SD3 at
        # shift 1 (a schedule it was not trained for).
        settings.setdefault("flow_shift", base_config.get("shift", 1.0))
    scheduler_class = getattr(diffusers, plan.class_name, None)
    if scheduler_class is None:
        raise ValueError(f"diffusers has no scheduler class {plan.class_name}")
    defaults = CLASS_DEFAULTS.get(plan.class_name, {})
    return scheduler_class.from_config({**defaults, **base_config, **settings})
