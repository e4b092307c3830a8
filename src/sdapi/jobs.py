"""The domain: jobs, their lifecycle, and what a generation asks for.

Pure on purpose: nothing here imports FastAPI, SQL drivers or torch, so every layer can use it
and it can be tested without any of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

#: Seeds are unsigned 64-bit integers (the wire sends them as int64, torch accepts 0..2**64-1).
SEED_MODULUS = 2**64


class Task(StrEnum):
    TEXT2IMG = "text2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    #: Super resolution: one image upscaled (spec section 8).
    UPSCALE = "super_resolution"


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: A finished job whose files were removed by retention.
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.PROCESSING)


#: Every allowed change of state. PROCESSING -> QUEUED is a lease that expired (the worker died).
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.PROCESSING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.PROCESSING: frozenset(
        {JobStatus.QUEUED, JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCESS: frozenset({JobStatus.EXPIRED}),
    JobStatus.FAILED: frozenset({JobStatus.EXPIRED}),
    JobStatus.CANCELLED: frozenset({JobStatus.EXPIRED}),
    JobStatus.EXPIRED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A state change the transition table does not allow: a bug, never user input."""


def check_transition(src: JobStatus, dst: JobStatus) -> None:
    if dst not in TRANSITIONS[src]:
        raise InvalidTransition(f"job cannot go from {src} to {dst}")


def sources_of(dst: JobStatus) -> tuple[JobStatus, ...]:
    """The states a job may be in to move to `dst`; SQL backends put these in their WHERE."""
    return tuple(src for src, dsts in TRANSITIONS.items() if dst in dsts)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A normalised generation request: every default applied, every value checked."""

    task: Task
    model: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    samples: int
    steps: int
    guidance_scale: float
    #: Decided at submit time when the client gave none, so a retried job makes the same images.
    seed: int
    scheduler: str | None = None
    #: img2img/inpaint: how much of the init image is replaced (0..1).
    strength: float | None = None
    #: Names of the stored input images (img2img, inpaint), never user URLs.
    init_image: str | None = None
    mask_image: str | None = None
    #: Scheduler options (sdapi.catalog.schedulers.check_scheduler_options says which apply):
    #: Karras sigmas on; DPM-Solver's variant ("dpmsolver++", ...). Off/None: the model's own.
    use_karras_sigmas: bool = False
    algorithm_type: str | None = None
    #: LoRAs as (name, weight) and textual-inversion embeddings by name, installed in the models
    #: folder (sdapi.catalog.adapters parses and checks them). They change the whole call.
    loras: tuple[tuple[str, float], ...] = ()
    embeddings: tuple[str, ...] = ()
    #: Run the NSFW safety checker on the images; a flagged one is replaced the
    #: `safety_checker_type` way: black, blur, pixelate or sensitive_content_text.
    safety_checker: bool = False
    safety_checker_type: str = "black"
    #: The CLIP layer the prompt is read from, counted as on the wire: 1 (or None) is the last.
    clip_skip: int | None = None
    #: Super resolution: the factor (2..4; width and height are the output's size, the input's
    #: times it) and the noise added to the low-resolution image (the x4 upscaler's noise_level).
    scale: int | None = None
    noise_level: int | None = None
    #: Pipeline variants (sdapi.engine.variants): MultiDiffusion panorama, self-attention
    #: guidance. Text-to-image on SD 1.x/2.x models only; the API drops them elsewhere, saying so.
    panorama: bool = False
    self_attention: bool = False
    #: Second pass (sdapi.engine.passes): `highres_fix` draws at the model's native size first
    #: when the request is larger, `upscale` (1-3) multiplies the output's sides; either way
    #: the picture is enlarged and refined with img2img. width/height stay the requested size.
    highres_fix: bool = False
    upscale: int = 1
    #: A VAE from the models folder to decode with (sdapi.catalog.vaes); None: the model's own.
    vae: str | None = None
    #: Token merging (tomesd) during the call: faster, slightly different images.
    tomesd: bool = False
    #: Run in pipeline calls of exactly this many images (padded when fewer are waiting): an
    #: image's bytes depend on how many were computed with it, so asking for the `call_size`
    #: a result's meta shows reproduces it bit for bit. None: calls as the worker batches them.
    call_size: int | None = None
    #: The prompt options (sdapi.catalog.prompts): the worker translates the prompts to English
    #: (`multi_lingual`), sets them in a named style, then appends the quality words, before
    #: drawing. `prompt` and `negative_prompt` stay as the client sent them.
    multi_lingual: bool = False
    enhance_style: str | None = None
    enhance_prompt: bool = False

    @property
    def output_size(self) -> tuple[int, int]:
        """The images' size: the requested one, times `upscale`."""
        return self.width * self.upscale, self.height * self.upscale

    def seeds(self) -> list[int]:
        """One seed per image, so image i is the same whatever else runs beside it."""
        return [(self.seed + i) % SEED_MODULUS for i in range(self.samples)]

    @property
    def two_pass(self) -> bool:
        """Drawn, then enlarged and refined by a second, img2img pass (sdapi.engine.passes)."""
        return self.highres_fix or self.upscale != 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GenerationRequest:
        data = json.loads(text)
        data["task"] = Task(data["task"])
        # JSON has lists; the fields are tuples (hashable, immutable). Older jobs lack them.
        if "loras" in data:
            data["loras"] = tuple((str(name), float(weight)) for name, weight in data["loras"])
        if "embeddings" in data:
            data["embeddings"] = tuple(data["embeddings"])
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Echo:
    """What a job's answers say back that nothing runs on (sdapi.api.v3.translate shows it)."""

    #: The `<uuid>` of the output names (meta.file_prefix).
    file_prefix: str = ""
    #: The input images as the client gave them, when URLs (base64 is answered by its stored
    #: copy's link, never echoed).
    init_image: str | None = None
    mask_image: str | None = None
    #: Option -> why it was not applied (meta's `<option>_note`).
    notes: Mapping[str, str] = field(default_factory=dict)
    #: super_resolution: face_enhance was asked for (no face restorer runs: a note says so).
    face_enhance: bool = False

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "notes": dict(self.notes)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Echo:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}  # older rows hold keys that are columns now
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True, slots=True)
class Rendered:
    """The prompts a worker drew the images from, when the prompt options rewrote them."""

    prompt: str
    negative_prompt: str
    #: With multi_lingual: the language detected, and whether the prompt was translated.
    language: str | None = None
    translated: bool = False
    #: Why an asked prompt option was not applied (a translator that failed), or None.
    note: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Rendered:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    #: Id of the API key that submitted it; a key sees only its own jobs.
    owner: str
    status: JobStatus
    request: GenerationRequest
    #: Decided at submit time (`<uuid>-<i>.png`): links handed out before the job runs are real.
    output_names: tuple[str, ...]
    created_at: float
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    #: A new token per claim: only the holder of the current lease may finish the job.
    lease_id: str | None = None
    lease_expires_at: float | None = None
    worker_id: str | None = None
    #: Fraction of the denoising done, 0..1.
    progress: float = 0.0
    #: The owner asked to cancel while it ran; its worker stops it at the next step.
    cancel_requested: bool = False
    generation_seconds: float | None = None
    error: str | None = None
    webhook: str | None = None
    track_id: str | None = None
    #: What the answers say back (Echo).
    echo: Echo = field(default_factory=Echo)
    #: The base URL the client submitted to: the links its webhook carries.
    base_url: str | None = None
    #: Also POST throttled progress events to the webhook while the job runs.
    webhook_progress: bool = False
    #: Where delivery of the webhook stands: "" (none), pending, retrying, delivered, failed.
    webhook_status: str = ""
    #: A job still queued at this time is failed instead of started.
    deadline_at: float | None = None
    #: Temporary outputs: the files are removed (and the job expired) at this time.
    keep_until: float | None = None
    #: The safety checker flagged (and replaced) at least one of its images.
    nsfw: bool = False
    #: How many images the pipeline call that made its images computed (sdapi.batching).
    call_size: int | None = None
    #: The prompts the images were drawn from, when the worker rewrote them (Rendered).
    rendered: Rendered | None = None

    def evolve(self, **changes: Any) -> Job:
        """A copy with changes; a change of status must be allowed by the transition table."""
        new_status = changes.get("status", self.status)
        if new_status != self.status:
            check_transition(self.status, new_status)
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Pending:
    """Live jobs of one batch key that wait together (queued) or run together (processing, on
    one worker): what the queue tells the ETA about the work ahead of a job."""

    batch_key: str
    #: The model and task (`rate_key`): what the key's cost is learned under.
    rate_key: str
    #: The worker running them; None for queued jobs.
    worker_id: str | None
    jobs: int
    images: int
    #: Their work units, and the denoising steps of one call for them.
    units: float
    steps: int
    #: Running jobs: when the first started, and the least progress among them (0..1).
    started_at: float | None = None
    progress: float = 0.0


@dataclass(frozen=True, slots=True)
class QueueStats:
    queued: int
    processing: int
    live_workers: int
    #: Every live job, grouped (see Pending), so each part is priced at its own cost.
    pending: tuple[Pending, ...] = ()

    @property
    def pending_work(self) -> float:
        return sum(group.units for group in self.pending)
