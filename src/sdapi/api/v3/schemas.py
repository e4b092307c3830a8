"""The v3 answers as schemas, for the OpenAPI document only.

Handlers return the dicts `translate` builds (the wire is lenient and keeps the real API's
quirks); these models describe those dicts so /docs and schema-driven tools (schemathesis, code
generators) know every status a route can answer and the fields each carries. Extra fields are
allowed everywhere: clients of the real API ignore what they do not know.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Meta(_Answer):
    """The parameters the job ran with (spec 11.4), both safety-checker spellings included.
    The size is H/W, or width/height on the v6 realtime routes."""

    H: int | None = None
    W: int | None = None
    height: int | None = None
    width: int | None = None
    prompt: str
    negative_prompt: str
    n_samples: int
    steps: int
    guidance_scale: float
    seed: int = Field(description="64-bit unsigned")
    model: str
    scheduler: str
    file_prefix: str
    base64: Literal["yes", "no"]
    temp: Literal["yes", "no"]
    # Generation options as done (absent on super_resolution); `<option>_note` says why an
    # option that was asked for was not applied.
    enhance_prompt: Literal["yes", "no"] | None = None
    enhance_style: str | None = None
    multi_lingual: Literal["yes", "no"] | None = Field(None, description="Yes: translated.")
    language: str | None = Field(None, description="With multi_lingual: the prompt's language.")
    panorama: Literal["yes", "no"] | None = None
    self_attention: Literal["yes", "no"] | None = None
    highres_fix: Literal["yes", "no"] | None = None
    upscale: Literal["no", "2", "3"] | None = Field(None, description="The output's factor.")
    vae: str | None = Field(None, description="The VAE decoded with; default: the model's.")
    tomesd: Literal["yes", "no"] | None = None
    call_size: int | None = Field(
        None,
        description="sdapi: how many images the pipeline call that made these computed (an"
        " image's bytes depend on it); send it as call_size to reproduce them bit for bit.",
    )


class UpscaleMeta(Meta):
    """A super_resolution job's parameters: the keys of every meta, and the upscaler's."""

    url: str | None = Field(None, description="The input: the URL given, or its stored copy.")
    scale: int
    native_scale: int = Field(description="The upscaler's own factor (4).")
    resize: Literal["none", "lanczos"] = Field(
        description="How the x4 image was brought to the scale asked: lanczos for 2 and 3."
    )
    face_enhance: Literal["no"] = Field(description="Never done; accepted for compatibility.")
    face_enhance_note: str | None = Field(None, description="When face_enhance was asked for.")
    noise_level: int | None


WebhookStatus = Literal["", "pending", "retrying", "delivered", "failed"]


class Processing(_Answer):
    """Queued or running. `eta` is seconds; fetch adds `progress` and `queue_position`."""

    status: Literal["processing"]
    id: int
    eta: float
    message: str
    messege: str = Field(description="The real API's spelling, kept for clients that read it.")
    tip: str
    output: list[str] = Field(description="Always empty while processing.")
    future_links: list[str] = Field(description="Where the images will appear.")
    fetch_result: str | None = Field(None, description="On submit: the URL to poll.")
    meta: Meta | None = Field(None, description="On submit.")
    progress: float | None = Field(None, ge=0, le=1, description="On fetch: 0 to 1.")
    queue_position: int | None = Field(None, ge=1, description="On fetch, while queued.")
    webhook_status: WebhookStatus


class Success(_Answer):
    status: Literal["success"]
    id: int
    generationTime: float = Field(description="Seconds the generation took.")
    output: list[str] = Field(description="Image URLs (base64 text when asked with base64).")
    future_links: list[str]
    meta: Meta
    webhook_status: WebhookStatus
    nsfw_content_detected: bool | None = Field(
        None, description="v6 routes, and any job that ran the safety checker."
    )
    proxy_links: list[str] | None = Field(None, description="v6 routes: the same URLs.")


class Upscaled(_Answer):
    """A finished super_resolution job: `output` is one URL string (spec section 8)."""

    status: Literal["success"]
    id: int
    generationTime: float = Field(description="Seconds the upscale took.")
    output: str = Field(description="The upscaled image's URL (base64 text when asked).")
    future_links: list[str]
    meta: UpscaleMeta
    webhook_status: WebhookStatus
    nsfw_content_detected: bool | None = Field(None, description="v6 fetch routes: false.")
    proxy_links: list[str] | None = Field(None, description="v6 fetch routes: the same URL.")


class Failed(_Answer):
    status: Literal["failed"]
    id: int
    message: Literal["Failed, Try Again"]
    messege: str
    error: str = Field(description="Why it failed.")
    output: list[str]
    webhook_status: WebhookStatus


class Cancelled(_Answer):
    """sdapi: the owner cancelled the job."""

    status: Literal["cancelled"]
    id: int
    message: str
    messege: str
    output: list[str]
    webhook_status: WebhookStatus


class Error(_Answer):
    """A refused request: a bad key, invalid fields (a dict of field -> messages), an unknown
    id, an image that could not be fetched; also a job whose outputs expired (`state`)."""

    status: Literal["error"]
    message: str | dict[str, list[str]]
    messege: str | dict[str, list[str]] | None = None
    tip: str | None = Field(None, description="With an invalid key.")
    detail: str | None = Field(None, description="A human explanation beside the wire text.")
    id: int | None = None
    state: str | None = Field(None, description='"expired" for a job removed by retention.')


class CancelAnswer(_Answer):
    status: Literal["success", "error"]
    id: int
    message: str
    messege: str
    state: str = Field(description="cancelled, cancelling, or the state the job had ended in.")


class JobSummary(_Answer):
    id: int
    status: Literal["queued", "processing", "success", "failed", "cancelled", "expired"]
    task: Literal["text2img", "img2img", "inpaint", "super_resolution"]
    prompt: str
    model: str
    width: int
    height: int
    samples: int
    steps: int
    seed: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: float
    generationTime: float | None
    output: list[str]
    error: str | None
    track_id: str | None
    webhook_status: WebhookStatus


class JobList(_Answer):
    status: Literal["success"]
    jobs: list[JobSummary]


class SystemLoad(_Answer):
    queue_num: int = Field(description="Jobs queued or running.")
    queue_time: int = Field(description="Seconds to drain them at the measured speed.")
    status: Literal["ok"]


class ModelItem(_Answer):
    model_id: str
    status: str
    created_at: str | None
    instance_prompt: str
    model_name: str
    description: str
    screenshots: str


class Reloaded(_Answer):
    status: Literal["success"]
    message: str
    model_id: str


def answers(*models: Any) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that answers any of `models` (all HTTP 200 on the v3 wire)."""
    union: Any = models[0]
    for model in models[1:]:
        union = union | model
    names = " | ".join(getattr(m, "__name__", str(m)) for m in models)
    return {200: {"model": union, "description": names}}


#: Generation calls and fetch answer a job in whatever state it is; fetch may also answer a
#: super_resolution job, and super_resolution answers its own success shape.
JOB = answers(Success, Processing, Failed, Cancelled, Error)
FETCH = answers(Success, Upscaled, Processing, Failed, Cancelled, Error)
UPSCALE = answers(Upscaled, Processing, Failed, Cancelled, Error)
CANCEL = answers(CancelAnswer, Error)
JOBS = answers(JobList, Error)
LOAD = answers(SystemLoad, Error)
#: model_list answers a bare JSON array (spec 9), or the error object.
MODELS = answers(list[ModelItem], Error)
RELOAD = answers(Reloaded, Error)
