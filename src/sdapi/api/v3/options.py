"""Reading the generation options (sdapi.catalog.options) off a v3 request.

An option that cannot be honoured where it is asked (panorama on an SDXL model, multi_lingual
without a translator) is not refused, since v3 clients send them by habit; it is dropped, and
the answer's meta says so beside it (`panorama: "no"`, `panorama_note: "..."`). Values that are
wrong in themselves (an unknown style, a VAE that is not installed) are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdapi.catalog.families import Family
from sdapi.catalog.options import OPTIONS, Context
from sdapi.jobs import Task

#: Every option's wire fields, in the catalog's order.
OPTION_FIELDS = [f for option in OPTIONS for f in option.fields]


@dataclass(slots=True)
class Options:
    """The options as the job will run them, and why any asked one was dropped."""

    #: GenerationRequest's option fields, by name.
    request: dict[str, Any] = field(default_factory=dict)
    #: option -> why it was not honoured (the answer's meta shows it as `<option>_note`).
    notes: dict[str, str] = field(default_factory=dict)


def read_options(
    values: dict[str, Any],
    family: Family | None,
    task: Task,
    models_dir: Path,
    *,
    translator: bool,
    scheduler: Callable[[], str | None],
) -> Options:
    """The options from the read field values, checked against the model's family and task;
    `scheduler()` tells the model's own scheduler class (None when it cannot be told)."""
    context = Context(values, family, task, models_dir, translator, scheduler)
    options = Options()
    for option in OPTIONS:
        if not option.fields:
            continue  # read by a route of its own (super_resolution's scale)
        value = option.read(values, context)
        if option.is_on(value) and (why := option.problem(value, context)):
            options.notes[option.name] = f"{option.name} was not applied: {why}"
            value = option.default
        option.check(value, context)
        options.request[option.name] = context.chosen[option.name] = value
    return options
