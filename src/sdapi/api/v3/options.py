"""Reading the generation options (sdapi.catalog.options) off a v3 request, and the prompt
options of spec sections 3 and 10 that rewrite the prompt.

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
from sdapi.fields import Field
from sdapi.jobs import Task
from sdapi.prompting import STYLES

PROMPT_FIELDS = [
    Field(
        "enhance_prompt",
        "flag",
        default=False,
        description="Append the real API's quality words to the prompt (meta.prompt shows"
        " them). sdapi's default is no, so a prompt is drawn as written.",
    ),
    Field(
        "enhance_style",
        "str",
        choices=frozenset(STYLES),
        description="A named look: the prompt is set in the style's words, and its negative"
        " words join the negative prompt.",
    ),
    Field(
        "multi_lingual",
        "flag",
        default=False,
        description="Translate a prompt that is not in English (needs the server's"
        " --translator; meta.language says what was detected).",
    ),
]
#: Every option's wire fields, in the catalog's order, then the prompt options'.
OPTION_FIELDS = [*(f for option in OPTIONS for f in option.fields), *PROMPT_FIELDS]


@dataclass(slots=True)
class Options:
    """The options as the job will run them, and why any asked one was dropped."""

    #: GenerationRequest's option fields, by name.
    request: dict[str, Any] = field(default_factory=dict)
    enhance_prompt: bool = False
    enhance_style: str | None = None
    multi_lingual: bool = False
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
    options = Options(
        enhance_prompt=values["enhance_prompt"],
        enhance_style=values["enhance_style"],
        multi_lingual=values["multi_lingual"],
    )
    for option in OPTIONS:
        if not option.fields:
            continue  # read by a route of its own (super_resolution's scale)
        value = option.read(values, context)
        if option.is_on(value) and (why := option.problem(value, context)):
            options.notes[option.name] = f"{option.name} was not applied: {why}"
            value = option.default
        option.check(value, context)
        options.request[option.name] = context.chosen[option.name] = value
    if options.multi_lingual and not translator:
        options.multi_lingual = False
        options.notes["multi_lingual"] = (
            "multi_lingual was not applied: this server has no translator (--translator)"
        )
    return options
