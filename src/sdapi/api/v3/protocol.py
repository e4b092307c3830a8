"""The v3 request fields and the exact strings of v3 answers (spec sections 3-7, 11)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sdapi.api.v3.fields import is_absent, read_fields, sentence
from sdapi.api.v3.options import OPTION_FIELDS, Options, read_options
from sdapi.catalog.families import Family, check_size
from sdapi.catalog.models import model_family, model_scheduler
from sdapi.catalog.options import SAFETY_CHECKER_TYPES
from sdapi.catalog.registry import Registry
from sdapi.catalog.schedulers import SCHEDULERS, UNSUPPORTED, check_scheduler_options
from sdapi.errors import ModelNotFound, ValidationFailed
from sdapi.fields import Field
from sdapi.jobs import Task
from sdapi.settings import Settings

#: Verbatim wire strings that clients compare (spec 11.1a, 15).
FETCH_PROCESSING_MESSAGE = "try again later."
FETCH_PROCESSING_TIP = (
    "Your image is processing in background, you can get this image using fetch API"
)
FAILED_MESSAGE = "Failed, Try Again"
CANCELLED_MESSAGE = "Request cancelled"
CANCELLING_MESSAGE = "Cancellation requested: the job stops at its next step"
TOO_LATE_MESSAGE = "Request already finished"
EXPIRED_MESSAGE = "Request expired: its images were removed at the end of their retention period"
#: super_resolution's meta, when face_enhance was asked for (it is accepted, never done).
FACE_ENHANCE_NOTE = "face_enhance is not supported: faces were upscaled like the rest"

MAX_SAMPLES = 4
MAX_PROMPT_CHARS = 5000
MAX_SEED = 2**64 - 1
#: Job ids are 64-bit signed in every queue (SQLite INTEGER, PostgreSQL BIGINT).
MAX_JOB_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """A generation request as the client sent it, coerced and range-checked."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    samples: int
    num_inference_steps: int
    guidance_scale: float
    seed: int | None
    scheduler: str | None
    strength: float
    init_image: str | None
    mask_image: str | None
    track_id: str | None
    webhook: str | None
    instant_response: bool
    #: A served model named by the client; None means the house model.
    model_id: str | None
    #: Outputs as base64 text (links whose body is the PNG in base64), as the spec describes.
    base64: bool = False
    #: Links that stop working after `--temp-ttl` (the spec's 24 hours).
    temp: bool = False
    #: sdapi: seconds the job may wait in line before it fails instead of starting.
    deadline: float | None = None
    #: sdapi: also POST throttled progress events to the webhook while the job runs.
    webhook_progress: bool = False
    safety_checker_type: str = "sensitive_content_text"
    #: The generation options (sdapi.catalog.options) and the prompt options (options.py).
    options: Options = field(default_factory=Options)


def generation_fields(settings: Settings, task: Task) -> list[Field]:
    """The fields a generation route reads; image fields are required where the task needs them."""
    needs_init = task in (Task.IMG2IMG, Task.INPAINT)
    return [
        Field(
            "prompt", "str", required=True, max_length=MAX_PROMPT_CHARS, description="What to draw."
        ),
        Field(
            "negative_prompt",
            "str",
            default="",
            max_length=MAX_PROMPT_CHARS,
            description="What to keep out of the image.",
        ),
        Field(
            "width",
            "int",
            default=512,
            minimum=64,
            maximum=settings.max_width,
            multiple_of=8,
            description="Output width in pixels, a multiple of 8.",
        ),
        Field(
            "height",
            "int",
            default=512,
            minimum=64,
            maximum=settings.max_height,
            multiple_of=8,
            description="Output height in pixels, a multiple of 8.",
        ),
        Field(
            "samples",
            "int",
            default=1,
            minimum=1,
            maximum=MAX_SAMPLES,
            description="Number of images.",
        ),
        Field(
            "num_inference_steps",
            "int",
            default=20,
            minimum=1,
            maximum=settings.max_steps,
            aliases=("steps",),
            description="Denoising steps.",
        ),
        Field(
            "guidance_scale",
            "float",
            default=7.5,
            minimum=1,
            maximum=20,
            description="Classifier-free guidance scale.",
        ),
        # -1 means "random" in A1111-style clients; 0..2**64-1 otherwise.
        Field(
            "seed",
            "int",
            minimum=-1,
            maximum=MAX_SEED,
            description="Seed for reproducible images; null or -1 picks one.",
        ),
        Field(
            "scheduler",
            "str",
            choices=frozenset(SCHEDULERS) | frozenset(UNSUPPORTED),
            description="Sampler; the model's default when absent.",
        ),
        Field(
            "strength",
            "float",
            default=0.7,
            minimum=0,
            maximum=1,
            aliases=("prompt_strength",),
            description="img2img/inpaint: 1.0 replaces the init image entirely; the job runs"
            " int(strength x num_inference_steps) steps, which must be at least 1.",
        ),
        Field(
            "init_image",
            "str",
            required=needs_init,
            description="Source image: an http(s) URL, a data URI or base64.",
        ),
        Field(
            "mask_image",
            "str",
            required=task is Task.INPAINT,
            description="Inpaint mask (white = repaint): an http(s) URL, a data URI or base64.",
        ),
        Field("track_id", "str", max_length=255, description="Returned with the webhook call."),
        Field(
            "webhook",
            "str",
            max_length=2048,
            description="URL to POST the result to when the job ends (stored).",
        ),
        Field(
            "model_id",
            "str",
            max_length=1024,
            description="A model this server serves (see --model); the default one otherwise.",
        ),
        Field(
            "instant_response",
            "flag",
            default=False,
            description="Answer `processing` at once instead of waiting for the image.",
        ),
        Field(
            "base64",
            "flag",
            default=False,
            description="Output links serve the PNG as base64 text instead of image bytes.",
        ),
        Field(
            "temp",
            "flag",
            default=False,
            description="Output links stop working after 24 hours (the server's --temp-ttl).",
        ),
        Field(
            "safety_checker_type",
            "str",
            default="sensitive_content_text",
            choices=frozenset(SAFETY_CHECKER_TYPES),
            description="How a flagged image is replaced: black, blur, pixelate or"
            " sensitive_content_text.",
        ),
        Field(
            "webhook_progress",
            "flag",
            default=False,
            description="sdapi: also POST progress events (best effort) while the job runs.",
        ),
        Field(
            "deadline",
            "float",
            minimum=1,
            maximum=7 * 24 * 3600,
            description="sdapi: seconds the job may wait in line; still queued then, it fails.",
        ),
        *OPTION_FIELDS,
    ]


def read_generation(
    body: dict[str, Any], settings: Settings, task: Task, *, model_required: bool = False
) -> GenerationParams:
    """The request's fields, checked. With `model_required` (the community-model families),
    `model_id` must name a served model; otherwise an unknown one is ignored, as v3 did."""
    values = read_fields(body, generation_fields(settings, task))
    if task is not Task.TEXT2IMG:
        _check_denoising_steps(values["num_inference_steps"], values["strength"])
    if values["scheduler"] in UNSUPPORTED:
        name = values["scheduler"]
        raise ValidationFailed.one(
            "scheduler", f"The scheduler {name} is not supported: {UNSUPPORTED[name]}."
        )
    # [compat] v3 clients send model_ids the real API ignored ("midjourney", ...): a model this
    # server does not serve is ignored too, not refused, except where the family requires one.
    if model_required:
        _check_model_id(values["model_id"], settings)
    if values["model_id"] not in settings.model:
        values["model_id"] = None
    family = _check_family(values, settings, task)
    model = values["model_id"] or settings.default_model
    values["options"] = read_options(
        values,
        family,
        task,
        settings.models_dir,
        translator=bool(settings.translator),
        scheduler=lambda: model_scheduler(model, settings.models_dir),
    )
    _check_pixels(values, settings)
    if values["seed"] == -1:
        values["seed"] = None
    # Image fields a task has no use for are ignored, like any unknown field.
    if task is not Task.INPAINT:
        values["mask_image"] = None
    if task is Task.TEXT2IMG:
        values["init_image"] = None
    names = {f.name for f in fields(GenerationParams)}
    return GenerationParams(**{k: v for k, v in values.items() if k in names})


def _check_model_id(model_id: str | None, settings: Settings) -> None:
    if model_id is None:
        raise ValidationFailed.one("model_id", "The model id field is required.")
    if model_id not in settings.model:
        raise ModelNotFound(detail=f"served models: {', '.join(settings.model)}")


def _check_pixels(values: dict[str, Any], settings: Settings) -> None:
    """The output's pixels (upscale multiplies both sides) times samples, within the cap; an
    exact call size, which computes that many images, counts instead of samples."""
    options = values["options"].request
    factor, call_size = options["upscale"], options["call_size"]
    images, field = (call_size, "call_size") if call_size else (values["samples"], "samples")
    pixels = values["width"] * values["height"] * images * factor * factor
    if pixels > settings.max_job_pixels:
        raise ValidationFailed.one(
            field,
            f"The width x height x {field}{' x upscale²' if factor > 1 else ''} must be at most"
            f" {settings.max_job_pixels} pixels (this request asks for {pixels}).",
        )


def _check_family(values: dict[str, Any], settings: Settings, task: Task) -> Family | None:
    """What the model's family cannot run (a scheduler or option it lacks, a size it cannot
    make) is refused here, with the reason, instead of failing the job in the worker."""
    family = _family(values["model_id"] or settings.default_model, settings.models_dir)
    problem = check_scheduler_options(
        values["scheduler"],
        family,
        values["use_karras_sigmas"],
        values["algorithm_type"],
        task=task,
    )
    if problem:
        about_algorithm = values["algorithm_type"] and "algorithm" in problem
        raise ValidationFailed.one(
            "algorithm_type" if about_algorithm else "scheduler", sentence(problem)
        )
    if problem := check_size(family, values["width"], values["height"]):
        raise ValidationFailed.one("width", sentence(problem))
    return family


@functools.lru_cache(maxsize=256)
def _family(model: str, models_dir: Path) -> Family | None:
    # A model's family is fixed by its files; looked up once per model, not per request.
    return model_family(model, models_dir)


def _check_denoising_steps(steps: int, strength: float) -> None:
    """img2img and inpaint run int(steps x strength) steps (as diffusers counts them); with none
    the pipeline fails, so refuse here with the reason instead of failing the job."""
    if int(steps * strength) < 1:
        raise ValidationFailed.one(
            "strength",
            "The strength x num inference steps must be at least 1"
            f" (this request asks for {steps} x {strength:g}).",
        )


JOBS_FIELDS = [
    Field(
        "limit",
        "int",
        default=20,
        minimum=1,
        maximum=100,
        description="How many of the key's newest jobs to list.",
    )
]

MODEL_FIELDS = [
    Field("model_id", "str", required=True, max_length=1024, description="A served model's id.")
]


#: Registry default names -> the wire fields they fill.
DEFAULT_FIELDS = {"steps": "num_inference_steps"}


def with_model_defaults(
    body: dict[str, Any], registry: Registry, settings: Settings
) -> dict[str, Any]:
    """The body with the requested model's registry defaults (width, steps, scheduler, ...)
    filling the fields the client left out; what the client sent always wins."""
    model = body.get("model_id")
    if not isinstance(model, str) or model not in settings.model:
        model = settings.default_model
    defaults = registry.defaults_for(model).as_dict()
    filled = {DEFAULT_FIELDS.get(name, name): value for name, value in defaults.items()}
    given = {name: value for name, value in body.items() if not is_absent(value)}
    if "steps" in given:  # the wire's alias of num_inference_steps
        filled.pop("num_inference_steps", None)
    return {**filled, **given}


FETCH_FIELDS = [
    Field(
        "request_id",
        "int",
        minimum=0,
        maximum=MAX_JOB_ID,
        description="Job id (or put it in the path).",
    )
]


# --- super resolution (spec section 8) ---------------------------------------------------------

#: Input sides for super resolution: at most 512 px (2048 px out at scale 4), at least 16 px.
MAX_UPSCALE_SIDE = 512
MIN_UPSCALE_SIDE = 16
#: The x4 upscaler's max_noise_level.
MAX_NOISE_LEVEL = 350
#: Guidance without a prompt is wasted work (the prompt and the negative prompt are the same).
PROMPTED_GUIDANCE = 7.5
NO_GUIDANCE = 1.0
#: The generation fields super_resolution shares, as sdapi extensions beside the spec's.
_SHARED_UPSCALE_FIELDS = (
    "negative_prompt",
    "num_inference_steps",
    "seed",
    "track_id",
    "webhook",
    "instant_response",
    "base64",
    "temp",
    "webhook_progress",
    "deadline",
)


@dataclass(frozen=True, slots=True)
class UpscaleParams:
    """A super_resolution request as the client sent it, coerced and range-checked."""

    url: str
    scale: int
    #: Accepted for compatibility; no face restorer runs (meta says so).
    face_enhance: bool
    prompt: str
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    noise_level: int
    seed: int | None
    track_id: str | None
    webhook: str | None
    instant_response: bool
    base64: bool = False
    temp: bool = False
    deadline: float | None = None
    webhook_progress: bool = False


def upscale_fields(settings: Settings) -> list[Field]:
    """The fields super_resolution reads: the spec's, then sdapi's upscaler options."""
    shared = {f.name: f for f in generation_fields(settings, Task.TEXT2IMG)}
    return [
        Field(
            "url",
            "str",
            required=True,
            aliases=("init_image",),
            description="The image to upscale (at most 512x512): an http(s) URL, a data URI or"
            " base64.",
        ),
        Field("scale", "int", default=4, minimum=2, maximum=4, description="2, 3 or 4."),
        Field(
            "face_enhance",
            "flag",
            default=False,
            description="Accepted, not done: no face restorer runs (meta says so).",
        ),
        Field(
            "model_id",
            "str",
            max_length=1024,
            description="Ignored (the server's upscaler runs; Real-ESRGAN names are accepted).",
        ),
        Field(
            "prompt",
            "str",
            default="",
            max_length=MAX_PROMPT_CHARS,
            description="sdapi: what the image shows; the x4 upscaler is prompt-conditioned.",
        ),
        Field(
            "guidance_scale",
            "float",
            minimum=1,
            maximum=20,
            description="sdapi: guidance towards the prompt; 7.5 with a prompt, else 1 (none).",
        ),
        Field(
            "noise_level",
            "int",
            default=20,
            minimum=0,
            maximum=MAX_NOISE_LEVEL,
            description="sdapi: noise added to the input before upscaling; more invents more.",
        ),
        *(shared[name] for name in _SHARED_UPSCALE_FIELDS),
    ]


def read_upscale(body: dict[str, Any], settings: Settings) -> UpscaleParams:
    """The super_resolution fields, checked; `model_id` is ignored (the upscaler runs)."""
    if not settings.upscaler:
        raise ModelNotFound(detail="super_resolution is off on this server (no --upscaler)")
    values = read_fields(body, upscale_fields(settings))
    if values["seed"] == -1:
        values["seed"] = None
    if values["guidance_scale"] is None:
        values["guidance_scale"] = PROMPTED_GUIDANCE if values["prompt"] else NO_GUIDANCE
    names = {f.name for f in fields(UpscaleParams)}
    return UpscaleParams(**{k: v for k, v in values.items() if k in names})


def check_upscale_input(size: tuple[int, int]) -> None:
    """The input's size as a field error: refused before anything is stored."""
    width, height = size
    if max(width, height) > MAX_UPSCALE_SIDE:
        limit = f"{MAX_UPSCALE_SIDE}x{MAX_UPSCALE_SIDE}"
        raise ValidationFailed.one(
            "url",
            f"The url image must be at most {limit} pixels (it is {width}x{height}).",
        )
    if min(width, height) < MIN_UPSCALE_SIDE:
        raise ValidationFailed.one(
            "url",
            f"The url image must be at least {MIN_UPSCALE_SIDE}x{MIN_UPSCALE_SIDE} pixels"
            f" (it is {width}x{height}).",
        )
