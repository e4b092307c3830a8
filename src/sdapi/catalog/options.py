"""The generation options beyond the basic fields: one object each, holding all but its effect.

An option is a field of `GenerationRequest` (`name`) and here, in one place: the wire fields that
set it and how their values become its value (`read`, which refuses a value wrong in itself),
why it cannot run for a model's family and task (`problem`: it is then dropped and the answer's
meta says why, since v3 clients send options by habit), what a kept one cannot run with
(`check`, refused), its part of the batch key (jobs share a pipeline call only when their
options agree), how it changes the work a job is priced at, and what the answer's meta shows.
What it does to a pipeline call is its effect in the engine (sdapi.engine.options), found by the
same name.

So adding an option is: a field of GenerationRequest, an object here (in OPTIONS, where its place
is its place in the batch key), and its effect in sdapi.engine.options if it has one. The wire
reads it, the batch key, the work units, the answer's meta and the OpenAPI document follow.

Torch-free: the API reads and checks requests with this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdapi.catalog.adapters import check_adapters, parse_embeddings, parse_loras
from sdapi.catalog.families import SD, SD3, Family
from sdapi.catalog.prompts import STYLES
from sdapi.catalog.vaes import check_vae, parse_vae
from sdapi.errors import ValidationFailed
from sdapi.fields import Field
from sdapi.jobs import GenerationRequest, Task

#: Self-attention guidance runs the UNet on a blurred copy too: 3 passes a step instead of 2.
SELF_ATTENTION_COST = 1.5
#: Panorama windows (pixels): SD 1.x's native side, moved by an eighth of it.
PANORAMA_WINDOW = 512
PANORAMA_STRIDE = PANORAMA_WINDOW // 8
#: Self-attention guidance predicts the clean image DDIM-style from the integer timestep
#: (alphas_cumprod[t]), so it needs a scheduler whose latents are not scaled by sigmas: these.
SAG_SCHEDULERS = frozenset(
    {
        "DDIMScheduler",
        "DDPMScheduler",
        "PNDMScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
        "LCMScheduler",
    }
)
#: How a flagged image is replaced (sdapi.engine.safety draws them).
SAFETY_CHECKER_TYPES = ("black", "blur", "pixelate", "sensitive_content_text")
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


@dataclass(frozen=True, slots=True)
class Context:
    """What an option is read and checked against: the request's basic fields as read, the
    model's family, the task and the server's models folder."""

    values: Mapping[str, Any]
    family: Family | None
    task: Task
    models_dir: Path
    #: Whether the server can translate (multi_lingual).
    translator: bool = False
    #: The model's own scheduler class, when the request names none (read lazily: a file).
    model_scheduler: Callable[[], str | None] = lambda: None
    #: The options' values as read so far, in OPTIONS' order (one may depend on another's).
    chosen: dict[str, Any] = field(default_factory=dict)

    @property
    def scheduler(self) -> str | None:
        return self.values.get("scheduler") or self.model_scheduler()


def refuse(wire_field: str, message: str) -> ValidationFailed:
    """A value wrong in itself: the request is refused, naming the wire field."""
    return ValidationFailed.one(wire_field, f"{message.rstrip('.')}.")


class Option:
    """An option as most are: a flag, off by default, named on the wire and in the batch key
    as it is in the request. Subclasses change what differs."""

    #: The GenerationRequest field.
    name: str
    default: Any = False
    #: Applied by the engine, which the second pass of a two-pass request (an img2img at the
    #: output size) runs without (panorama, self_attention, the passes themselves).
    first_pass_only: bool = False

    def __init__(self, name: str, fields: tuple[Field, ...] = ()) -> None:
        self.name = name
        #: The wire fields that set it; the first is named after it.
        self.fields = fields

    def read(self, values: Mapping[str, Any], context: Context) -> Any:
        """Its value from the wire fields as read (sdapi.fields); ValidationFailed for a value
        wrong in itself."""
        return values[self.name]

    def problem(self, value: Any, context: Context) -> str | None:
        """Why it cannot be honoured for this model and task (it is dropped, saying so)."""
        return None

    def check(self, value: Any, context: Context) -> None:
        """ValidationFailed when it is kept but cannot run with the rest of the request."""

    def is_on(self, value: Any) -> bool:
        return value != self.default and value is not None

    def key(self, value: Any) -> str | None:
        """Its part of the batch key, None when it is off."""
        return self.name if self.is_on(value) else None

    def units(self, request: GenerationRequest, units: float) -> float:
        """The work units of `request`'s images with this option on (sdapi.catalog.work)."""
        return units

    def meta(self, request: GenerationRequest) -> dict[str, Any]:
        """What the answer's meta shows of it."""
        return {self.name: _yes_no(bool(getattr(request, self.name)))}


class Valued(Option):
    """An option whose key shows its value: `name:value`."""

    default = None

    def key(self, value: Any) -> str | None:
        return f"{self.name}:{value}" if self.is_on(value) else None

    def meta(self, request: GenerationRequest) -> dict[str, Any]:
        value = getattr(request, self.name)
        return {self.name: value} if self.is_on(value) else {}


class Karras(Option):
    def key(self, value: Any) -> str | None:
        return "karras" if value else None

    def meta(self, request: GenerationRequest) -> dict[str, Any]:
        return {}


class AlgorithmType(Valued):
    def key(self, value: Any) -> str | None:
        return value if value is not None else None

    def meta(self, request: GenerationRequest) -> dict[str, Any]:
        return {}


class Loras(Option):
    """lora_model + lora_strength: LoRAs from the models folder with their weights."""

    default = ()

    def read(self, values: Mapping[str, Any], context: Context) -> Any:
        try:
            loras = parse_loras(values["lora_model"], values["lora_strength"])
        except ValueError as exc:
            raise refuse("lora_model", str(exc)) from None
        if problem := check_adapters(context.models_dir, loras, (), context.family):
            raise refuse("lora_model", problem)
        return loras

    def key(self, value: Any) -> str | None:
        if not value:
            return None
        # Sorted: the engine applies a set of LoRAs the same whatever their order.
        loras = sorted((name, float(weight)) for name, weight in value)
        return "lora:" + ",".join(f"{name}={weight!r}" for name, weight in loras)

    def meta(self, request: GenerationRequest) -> dict[str, Any]:
        if not request.loras:
            return {}
        return {
            "lora_model": ",".join(name for name, _ in request.loras),
            "lora_strength": ",".join(f"{weight:g}" for _, weight in request.loras),
        }


class Embeddings(Option):
    """embeddings_model: textual-inversion embeddings from the models folder."""

    default = ()

    def read(self, values: Mapping[str, Any], context: Context) -> Any:
        try:
            embeddings = parse_embeddings(values["embeddings_model"])
        except ValueError as exc:
            raise refuse("embeddings_model", str(exc)) from None
        if problem := check_adapters(context.models_dir, (), embeddings, context.family):
            raise refuse("embeddings_model", problem)
        return embeddings

    def key(self, value: Any) -> str | None:
        return "embeddings:" + ",".join(sorted(value)) if value else None

    def meta(self, request: GenerationRequest) -> dict[str, Any]:
        return {"embeddings_model": ",".join(request.embeddings)} if request.embeddings else {}


class ClipSkip(Valued):
    """1 (the default, the last layer) changes nothing: not in the key."""

    def is_on(self, value: Any) -> bool:
        return value not in (None, 1)

    def meta(self, request: GenerationRequest) -> dict[str, Any]:
        return {"clip_skip": request.clip_skip} if request.clip_skip is not None else {}


class SafetyChecker(Option):
    """In the key although it changes no pixel of an image it passes: a missing checker fails
    the whole call, and must fail only the jobs that asked for it; its time is learned apart.
    `safety_checker_type` is not: the replacement is made per image, after the call."""

    def meta(self, request: GenerationRequest) -> dict[str, Any]:
        on = _yes_no(request.safety_checker)
        # Both spellings: typed clients read one or the other (spec 11.4).
        data: dict[str, Any] = {"safetychecker": on, "safety_checker": on}
        if request.safety_checker:
            data["safety_checker_type"] = request.safety_checker_type
        return data


class Panorama(Option):
    first_pass_only = True

    def problem(self, value: Any, context: Context) -> str | None:
        return variant_problem(self.name, context.family, context.task)

    def units(self, request: GenerationRequest, units: float) -> float:
        """A panorama denoises overlapping windows of the model's native size, moved by an
        eighth of it (sdapi.engine.variants), counted at SD 1.x's 512 px (the cost learned for
        the job's batch key corrects other models' estimates)."""

        def views(side: int) -> int:
            if side <= PANORAMA_WINDOW:
                return 1
            return (side - PANORAMA_WINDOW) // PANORAMA_STRIDE + 1

        width, height = request.width, request.height
        window = min(width, PANORAMA_WINDOW) * min(height, PANORAMA_WINDOW)
        return units * views(width) * views(height) * window / (width * height)


class SelfAttention(Option):
    first_pass_only = True

    def check(self, value: Any, context: Context) -> None:
        # Refused now rather than failed in the worker; an unknown scheduler is the worker's.
        if value and (scheduler := context.scheduler) and (why := sag_scheduler_problem(scheduler)):
            raise refuse("scheduler", why)

    def problem(self, value: Any, context: Context) -> str | None:
        if problem := variant_problem(self.name, context.family, context.task):
            return problem
        if context.chosen.get("panorama"):
            return "not combined with panorama (one pipeline per image)"
        return None

    def units(self, request: GenerationRequest, units: float) -> float:
        return units * SELF_ATTENTION_COST  # one more UNet pass a step


class HighresFix(Option):
    first_pass_only = True  # the second pass is the fix


class Upscale(Option):
    """The output's sides times 1-3: a second pass enlarges and refines the images."""

    default = 1
    first_pass_only = True

    def read(self, values: Mapping[str, Any], context: Context) -> Any:
        return UPSCALE_VALUES[values[self.name] or "no"]

    def key(self, value: Any) -> str | None:
        return f"upscale:{value}" if self.is_on(value) else None

    def meta(self, request: GenerationRequest) -> dict[str, Any]:
        return {"upscale": "no" if request.upscale == 1 else str(request.upscale)}


class Vae(Valued):
    """A VAE from the models folder's vae/ to decode with; None: the model's own."""

    def read(self, values: Mapping[str, Any], context: Context) -> Any:
        try:
            name = parse_vae(values[self.name])
        except ValueError as exc:
            raise refuse("vae", str(exc)) from None
        if name is not None and (problem := check_vae(context.models_dir, name, context.family)):
            raise refuse("vae", problem)
        return name

    def meta(self, request: GenerationRequest) -> dict[str, Any]:
        return {"vae": request.vae or "default"}


class Tomesd(Option):
    def problem(self, value: Any, context: Context) -> str | None:
        return tomesd_problem(context.family)


class CallSize(Valued):
    """Calls of exactly this many images (sdapi.batching): what reproduces an image's bytes."""

    def read(self, values: Mapping[str, Any], context: Context) -> Any:
        call_size = values[self.name]
        if call_size is not None and call_size < values["samples"]:
            raise refuse(
                "call_size",
                f"The call size must be at least samples (this request asks for {call_size} and"
                f" {values['samples']})",
            )
        return call_size

    def meta(self, request: GenerationRequest) -> dict[str, Any]:
        return {}  # the call the images were made in is the job's, which the answer shows


class PromptOption(Option):
    """The prompt options (sdapi.catalog.prompts): they change the prompts, which are each
    job's own in a shared call, so never the batch key."""

    def key(self, value: Any) -> str | None:
        return None


class EnhanceStyle(PromptOption):
    default = None

    def meta(self, request: GenerationRequest) -> dict[str, Any]:
        return {"enhance_style": request.enhance_style}


class MultiLingual(PromptOption):
    def problem(self, value: Any, context: Context) -> str | None:
        return None if context.translator else "this server has no translator (--translator)"

    def meta(self, request: GenerationRequest) -> dict[str, Any]:
        return {}  # whether it was translated is the job's outcome, which the answer shows


def variant_problem(option: str, family: Family | None, task: Task) -> str | None:
    """Why panorama or self_attention cannot run on this family and task (diffusers has them
    for SD 1.x/2.x text-to-image only)."""
    if family != SD:
        return f"{option} is only available for SD 1.x/2.x models (diffusers has no {family} one)"
    if task is not Task.TEXT2IMG:
        return f"{option} is only available for text2img"
    return None


def sag_scheduler_problem(scheduler_class: str) -> str | None:
    if scheduler_class in SAG_SCHEDULERS:
        return None
    names = ", ".join(sorted(SAG_SCHEDULERS))
    return (
        f"self_attention does not work with {scheduler_class} (its latents are scaled by"
        f" sigmas); choose a scheduler among {names}"
    )


def tomesd_problem(family: str | None) -> str | None:
    """Why token merging cannot apply to a model of `family` (None: it can, or the family is
    unknown and the engine checks the pipeline itself)."""
    if family == SD3:
        return (
            "tomesd is not available for SD3 models: token merging patches a UNet's transformer"
            " blocks, and SD3 uses an MMDiT transformer instead"
        )
    return None


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _flag(name: str, description: str, aliases: tuple[str, ...] = ()) -> Field:
    return Field(name, "flag", default=False, aliases=aliases, description=description)


# In batch-key order: a key lists the options that are on in this order.
OPTIONS: tuple[Option, ...] = (
    Karras(
        "use_karras_sigmas",
        (_flag("use_karras_sigmas", "Karras noise schedule, for the schedulers that have one."),),
    ),
    AlgorithmType(
        "algorithm_type",
        (
            Field(
                "algorithm_type",
                "str",
                max_length=32,
                description="DPM-Solver variant: dpmsolver, dpmsolver++, sde-dpmsolver,"
                " sde-dpmsolver++.",
            ),
        ),
    ),
    Loras(
        "loras",
        (
            Field(
                "lora_model",
                "str",
                max_length=1024,
                description="LoRAs from the models folder, comma separated: more_details,anime.",
            ),
            Field(
                "lora_strength",
                "str",
                max_length=256,
                description="Their weights (0 to 2): one for all, or one per LoRA; default 1.",
            ),
        ),
    ),
    Embeddings(
        "embeddings",
        (
            Field(
                "embeddings_model",
                "str",
                max_length=1024,
                description="Textual-inversion embeddings from the models folder, comma separated.",
            ),
        ),
    ),
    ClipSkip(
        "clip_skip",
        (
            Field(
                "clip_skip",
                "int",
                minimum=1,
                maximum=8,
                aliases=("clipskip",),
                description="Text encoder layer the prompt is read from, counted from the last"
                " (1).",
            ),
        ),
    ),
    SafetyChecker(
        "safety_checker",
        (
            _flag(
                "safety_checker",
                "Run the safety checker; flagged images are replaced.",
                ("safetychecker",),
            ),
        ),
    ),
    Valued("scale"),  # super_resolution's factor: its own route reads it
    Valued("noise_level"),
    Panorama(
        "panorama",
        (
            _flag(
                "panorama",
                "MultiDiffusion panorama for wide sizes (SD 1.x/2.x models, text2img).",
            ),
        ),
    ),
    SelfAttention(
        "self_attention",
        (
            _flag(
                "self_attention",
                "Self-attention guidance: finer detail, 1.5x the time (SD 1.x/2.x models,"
                " text2img, DDIM-like schedulers).",
            ),
        ),
    ),
    HighresFix(
        "highres_fix",
        (
            _flag(
                "highres_fix",
                "Sizes above the model's native one: draw at the native size, then enlarge and"
                " refine with img2img.",
            ),
        ),
    ),
    Tomesd(
        "tomesd",
        (_flag("tomesd", "Token merging: faster on large sizes, slightly different images."),),
    ),
    Upscale(
        "upscale",
        (
            Field(
                "upscale",
                "str",
                choices=frozenset(UPSCALE_VALUES),
                description="Output sides times 2 (yes, 2) or 3 (3): enlarged and refined with"
                " img2img.",
            ),
        ),
    ),
    Vae(
        "vae",
        (
            Field(
                "vae",
                "str",
                max_length=200,
                description="A VAE installed in the models folder's vae/ (e.g."
                " stabilityai/sd-vae-ft-mse) to decode with; the model's own when absent.",
            ),
        ),
    ),
    PromptOption(
        "enhance_prompt",
        (
            _flag(
                "enhance_prompt",
                "Append the real API's quality words to the prompt (meta.prompt shows them)."
                " sdapi's default is no, so a prompt is drawn as written.",
            ),
        ),
    ),
    EnhanceStyle(
        "enhance_style",
        (
            Field(
                "enhance_style",
                "str",
                choices=frozenset(STYLES),
                description="A named look: the prompt is set in the style's words, and its"
                " negative words join the negative prompt.",
            ),
        ),
    ),
    MultiLingual(
        "multi_lingual",
        (
            _flag(
                "multi_lingual",
                "Translate a prompt that is not in English (needs the server's --translator;"
                " meta.language says what was detected).",
            ),
        ),
    ),
    CallSize(
        "call_size",
        (
            Field(
                "call_size",
                "int",
                minimum=1,
                maximum=16,
                description="sdapi: compute the images in pipeline calls of exactly this many"
                " (at least samples; padded when fewer jobs share them). An image's bytes depend"
                " on its call's size: the call_size of an earlier result's meta reproduces it.",
            ),
        ),
    ),
)
BY_NAME: Mapping[str, Option] = {option.name: option for option in OPTIONS}
