"""The domain: jobs, their lifecycle, and what a generation asks for.

Pure on purpose: nothing here imports FastAPI, SQL drivers or torch, so every layer can use it
and it can be tested without any of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

#: Seeds are unsigned 64-bit integers (the wire sends them as int64, torch accepts 0..2**64-1).
SEED_MODULUS = 2**64
#: One "work unit" is one denoising step of one 512x512 image (sdapi.costs prices them).
REFERENCE_PIXELS = 512 * 512
#: The VAE decode of an image costs about this many of its denoising steps (1-2 for SD 1.5 on a
#: GPU, 3-4 for the built-in tiny model on a CPU), so it is counted in its work units.
DECODE_STEPS = 2
#: The x4 upscaler's own factor: scales 2 and 3 run it, then resize its output down.
UPSCALE_NATIVE_SCALE = 4
#: The VAE decode of an upscaler's x4 output costs about this many of its denoising steps
#: (measured on the built-in tiny upscaler on a CPU, 64 to 256 px inputs), so it is counted in.
UPSCALE_DECODE_STEPS = 6
#: The strength of the refining img2img pass of `highres_fix` and `upscale`: enough to redraw
#: detail at the larger size, little enough to keep the composition (A1111 users pick 0.3-0.6).
REFINE_STRENGTH = 0.5
#: Self-attention guidance runs the UNet on a blurred copy too: 3 passes a step instead of 2.
SELF_ATTENTION_COST = 1.5
#: Panorama windows (pixels): SD 1.x's native side, moved by an eighth of it.
PANORAMA_WINDOW = 512
PANORAMA_STRIDE = PANORAMA_WINDOW // 8


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


def _panorama_cost(width: int, height: int) -> float:
    """How many times its own area a panorama denoises: overlapping windows of the model's
    native size, moved by an eighth of it (sdapi.engine.variants), counted at SD 1.x's 512 px
    (the rate learned for the job's batch key corrects other models' estimates)."""

    def views(side: int) -> int:
        return (side - PANORAMA_WINDOW) // PANORAMA_STRIDE + 1 if side > PANORAMA_WINDOW else 1

    window = min(width, PANORAMA_WINDOW) * min(height, PANORAMA_WINDOW)
    return views(width) * views(height) * window / (width * height)


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
    #: Scheduler options (sdapi.engine.schedulers.check_scheduler_options says which apply):
    #: Karras sigmas on; DPM-Solver's variant ("dpmsolver++", ...). Off/None: the model's own.
    use_karras_sigmas: bool = False
    algorithm_type: str | None = None
    #: LoRAs as (name, weight) and textual-inversion embeddings by name, installed in the models
    #: folder (sdapi.engine.adapters parses and checks them). They change the whole call.
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
    #: A VAE from the models folder to decode with (sdapi.engine.vaes); None: the model's own.
    vae: str | None = None
    #: Token merging (tomesd) during the call: faster, slightly different images.
    tomesd: bool = False
    #: Run in pipeline calls of exactly this many images (padded when fewer are waiting): an
    #: image's bytes depend on how many were computed with it, so asking for the `call_size`
    #: a result's meta shows reproduces it bit for bit. None: calls as the worker batches them.
    call_size: int | None = None

    @property
    def output_size(self) -> tuple[int, int]:
        """The images' size: the requested one, times `upscale`."""
        return self.width * self.upscale, self.height * self.upscale

    def seeds(self) -> list[int]:
        """One seed per image, so image i is the same whatever else runs beside it."""
        return [(self.seed + i) % SEED_MODULUS for i in range(self.samples)]

    @property
    def batch_key(self) -> str:
        """Jobs with equal keys can share one pipeline call."""
        parts: list[object] = [
            self.model,
            self.task,
            f"{self.width}x{self.height}",
            self.steps,
            self.scheduler or "default",
            self.guidance_scale,
            self.strength,
        ]
        # Appended only when set, so requests without these options keep the keys (and the
        # rates learned under them) they had before the options existed.
        if self.use_karras_sigmas:
            parts.append("karras")
        if self.algorithm_type is not None:
            parts.append(self.algorithm_type)
        parts.extend(self._model_option_key_parts())
        if self.scale is not None:  # with the output size, this fixes the input's size too
            parts.append(f"scale:{self.scale}")
        if self.noise_level is not None:
            parts.append(f"noise_level:{self.noise_level}")
        parts.extend(self._pipeline_option_key_parts())
        if self.call_size is not None:
            parts.append(f"call_size:{self.call_size}")
        return "|".join(str(p) for p in parts)

    def _pipeline_option_key_parts(self) -> list[str]:
        """The batch key's parts for options that change the pipeline or its passes."""
        flags = {
            "panorama": self.panorama,
            "self_attention": self.self_attention,
            "highres_fix": self.highres_fix,
            "tomesd": self.tomesd,
        }
        parts = [name for name, on in flags.items() if on]
        if self.upscale != 1:
            parts.append(f"upscale:{self.upscale}")
        if self.vae is not None:
            parts.append(f"vae:{self.vae}")
        return parts

    def _model_option_key_parts(self) -> list[str]:
        """The batch key's parts for LoRAs, embeddings, clip_skip and the safety checker.

        Sorted: the engine applies a set of LoRAs or embeddings the same whatever their order.
        clip_skip 1 is the default. `safety_checker_type` is left out: the replacement is made
        per image after the call. The checker itself is in, although it changes no pixel of an
        image it passes: a missing checker fails the whole call, and must fail only the jobs
        that asked for it; its time is also learned apart.
        """
        parts: list[str] = []
        if self.loras:
            loras = sorted((name, float(weight)) for name, weight in self.loras)
            parts.append("lora:" + ",".join(f"{name}={weight!r}" for name, weight in loras))
        if self.embeddings:
            parts.append("embeddings:" + ",".join(sorted(self.embeddings)))
        if self.clip_skip not in (None, 1):
            parts.append(f"clip_skip:{self.clip_skip}")
        if self.safety_checker:
            parts.append("safety_checker")
        return parts

    @property
    def work_units(self) -> float:
        """The work in 512x512-image-steps, decode included: what time grows with beyond a
        call's fixed costs (sdapi.costs)."""
        if self.task is Task.UPSCALE:
            return self._upscale_units()
        units = (self._denoising_steps + DECODE_STEPS) * self.samples * self._pixel_share
        if self.self_attention:
            units *= SELF_ATTENTION_COST  # one more UNet pass a step
        if self.panorama:
            units *= _panorama_cost(self.width, self.height)
        if self._two_pass:
            # The refining pass: img2img at the output size (an upper bound with highres_fix,
            # whose first pass may be smaller than counted).
            width, height = self.output_size
            units += (
                (self._refine_steps + DECODE_STEPS)
                * self.samples
                * width
                * height
                / (REFERENCE_PIXELS)
            )
        return units

    @property
    def call_steps(self) -> int:
        """Denoising steps a call for this request runs, both passes of a two-pass one."""
        if self.task is Task.UPSCALE:
            return self.steps
        return self._denoising_steps + (self._refine_steps if self._two_pass else 0)

    @property
    def _denoising_steps(self) -> int:
        if self.task is not Task.TEXT2IMG and self.strength is not None:
            return max(1, int(self.steps * self.strength))  # diffusers skips the early steps
        return self.steps

    @property
    def _refine_steps(self) -> int:
        return max(1, int(self.steps * REFINE_STRENGTH))

    @property
    def _two_pass(self) -> bool:
        return self.highres_fix or self.upscale != 1

    @property
    def _pixel_share(self) -> float:
        return self.width * self.height / REFERENCE_PIXELS

    def _upscale_units(self) -> float:
        """The x4 upscaler runs its steps on the input's pixels and decodes a 4x image; both
        scale with the area of that 4x image, which is counted like a generated one (the input
        is capped, so this stays within a few hundred units)."""
        native = UPSCALE_NATIVE_SCALE / (self.scale or UPSCALE_NATIVE_SCALE)
        pixels = self.width * native * self.height * native
        return (self.steps + UPSCALE_DECODE_STEPS) * self.samples * pixels / REFERENCE_PIXELS

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
    #: What the client sent that answers echo back (original image URLs, ...); opaque here.
    echo: Mapping[str, Any] = field(default_factory=dict)
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
