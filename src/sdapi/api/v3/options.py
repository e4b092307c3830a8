"""The generation options of spec sections 3, 9 and 10 beyond the basic fields: what each asks,
and whether this server can honour it for the requested model and task.

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

from sdapi.api.v3.fields import Field, sentence
from sdapi.engine.families import Family
from sdapi.engine.token_merging import tomesd_problem
from sdapi.engine.vaes import check_vae, parse_vae
from sdapi.engine.variants import (
    PANORAMA,
    SELF_ATTENTION,
    sag_scheduler_problem,
    variant_problem,
)
from sdapi.errors import ValidationFailed
from sdapi.jobs import Task
from sdapi.prompting import STYLES

#: The wire's `upscale` values and the factor each means ("yes" is the v3 docs' 512 -> 1024;
#: v4 sends 1, 2 or 3).
UPSCALE_VALUES = {
    "no": 1,
    "false": 1,
    "0": 1,
    "1": 1,
    "yes": 2,
    "true": 2,
    "2": 2,
    "3": 3,
}

#: The options the engine runs; the others rewrite the prompt.
ENGINE_OPTIONS = ("panorama", "self_attention", "highres_fix", "upscale", "vae", "tomesd")

OPTION_FIELDS = [
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
    Field(
        "panorama",
        "flag",
        default=False,
        description="MultiDiffusion panorama for wide sizes (SD 1.x/2.x models, text2img).",
    ),
    Field(
        "self_attention",
        "flag",
        default=False,
        description="Self-attention guidance: finer detail, 1.5x the time (SD 1.x/2.x models,"
        " text2img, DDIM-like schedulers).",
    ),
    Field(
        "highres_fix",
        "flag",
        default=False,
        description="Sizes above the model's native one: draw at the native size, then enlarge"
        " and refine with img2img.",
    ),
    Field(
        "upscale",
        "str",
        choices=frozenset(UPSCALE_VALUES),
        description="Output sides times 2 (yes, 2) or 3 (3): enlarged and refined with img2img.",
    ),
    Field(
        "vae",
        "str",
        max_length=200,
        description="A VAE installed in the models folder's vae/ (e.g. stabilityai/sd-vae-ft-mse)"
        " to decode with; the model's own when absent.",
    ),
    Field(
        "tomesd",
        "flag",
        default=False,
        description="Token merging: faster on large sizes, slightly different images.",
    ),
]


@dataclass(slots=True)
class Options:
    """The options as the job will run them, and why any asked one was dropped."""

    enhance_prompt: bool = False
    enhance_style: str | None = None
    multi_lingual: bool = False
    panorama: bool = False
    self_attention: bool = False
    highres_fix: bool = False
    upscale: int = 1
    vae: str | None = None
    tomesd: bool = False
    #: field -> why it was not honoured (the answer's meta shows it as `<field>_note`).
    notes: dict[str, str] = field(default_factory=dict)

    def request_fields(self) -> dict[str, Any]:
        """The options the engine runs: GenerationRequest's fields of the same names (the
        prompt options are done before, at submit time)."""
        return {name: getattr(self, name) for name in ENGINE_OPTIONS}


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
    as_read = {f.name: values[f.name] for f in OPTION_FIELDS if f.name not in ("upscale", "vae")}
    options = Options(
        **as_read,
        upscale=UPSCALE_VALUES[values["upscale"] or "no"],
        vae=_vae(values["vae"], family, models_dir),
    )
    _drop_variants(options, family, task)
    if options.self_attention:
        _check_sag_scheduler(values["scheduler"] or scheduler())
    if options.tomesd and (problem := tomesd_problem(family)):
        _drop(options, "tomesd", problem)
    if options.multi_lingual and not translator:
        _drop(options, "multi_lingual", "this server has no translator (--translator)")
    return options


def _check_sag_scheduler(scheduler: str | None) -> None:
    """Refused now rather than failed in the worker; an unknown one is the worker's to check."""
    if scheduler and (problem := sag_scheduler_problem(scheduler)):
        raise ValidationFailed.one("scheduler", sentence(problem))


def _drop_variants(options: Options, family: Family | None, task: Task) -> None:
    for name in (PANORAMA, SELF_ATTENTION):
        if getattr(options, name) and (problem := variant_problem(name, family, task)):
            _drop(options, name, problem)
    if options.panorama and options.self_attention:
        _drop(options, SELF_ATTENTION, "not combined with panorama (one pipeline per image)")


def _drop(options: Options, name: str, why: str) -> None:
    setattr(options, name, False)
    options.notes[name] = f"{name} was not applied: {why}"


def _vae(value: str | None, family: Family | None, models_dir: Path) -> str | None:
    try:
        name = parse_vae(value)
    except ValueError as exc:
        raise ValidationFailed.one("vae", sentence(str(exc))) from None
    if name is not None and (problem := check_vae(models_dir, name, family)):
        raise ValidationFailed.one("vae", sentence(problem))
    return name
