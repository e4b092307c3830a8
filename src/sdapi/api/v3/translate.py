"""Jobs to v3 answers. The only place that knows how a v3 response is spelled.

Shapes follow spec section 11 and the checklist in section 15: `id` is an int, `eta` and
`generationTime` are floats, `output` is always a list (typed clients break on ""), except in
a finished super_resolution job, where it is one URL string (spec section 8), `messege` (sic)
rides beside `message`, and every URL is absolute on this server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdapi.api.v3.protocol import (
    CANCELLED_MESSAGE,
    CANCELLING_MESSAGE,
    EXPIRED_MESSAGE,
    FACE_ENHANCE_NOTE,
    FAILED_MESSAGE,
    FETCH_PROCESSING_MESSAGE,
    FETCH_PROCESSING_TIP,
    TOO_LATE_MESSAGE,
)
from sdapi.api.v3.wires import BACKGROUND_TIP, V3, Wire
from sdapi.catalog.options import OPTIONS
from sdapi.catalog.prompts import render
from sdapi.catalog.work import UPSCALE_NATIVE_SCALE
from sdapi.jobs import Job, JobStatus, Task
from sdapi.storage.base import ImageStore


@dataclass(frozen=True, slots=True)
class Links:
    """Builds the absolute URLs of one request's answer."""

    base_url: str
    images: ImageStore
    #: The family's fetch route, which `fetch_result` points at.
    fetch_path: str = V3.fetch_result

    def image(self, name: str) -> str:
        return self.images.url(name, self.base_url)

    def outputs(self, job: Job) -> list[str]:
        return [self.image(name) for name in job.output_names]

    def fetch(self, job: Job) -> str:
        return f"{self.base_url.rstrip('/')}{self.fetch_path}/{job.id}"


def meta(job: Job, links: Links, wire: Wire = V3) -> dict[str, Any]:
    """The parameters the job was generated with (spec 11.4), only ones sdapi really used."""
    r = job.request
    if r.task is Task.UPSCALE:
        return upscale_meta(job, links, wire)
    width_key, height_key = wire.size_keys
    data: dict[str, Any] = {
        height_key: r.height,
        width_key: r.width,
        **_prompts(job),
        "n_samples": r.samples,
        "steps": r.steps,
        "guidance_scale": r.guidance_scale,
        "seed": r.seed,
        "model": r.model,
        "scheduler": r.scheduler or "default",
        "file_prefix": job.echo.file_prefix,
        "base64": _yes_no(any(n.endswith(".base64") for n in job.output_names)),
        "temp": _yes_no(job.keep_until is not None),
    }
    if r.task is not Task.TEXT2IMG:
        data["strength"] = r.strength
        data["init_image"] = _echo_image(job, links, "init_image", r.init_image)
    if r.task is Task.INPAINT:
        data["mask_image"] = _echo_image(job, links, "mask_image", r.mask_image)
    data |= option_meta(job)
    if job.track_id is not None:
        data["track_id"] = job.track_id
    if job.webhook is not None:
        data["webhook"] = job.webhook
    return data


def _prompts(job: Job) -> dict[str, str]:
    """The prompts the images were drawn from: what the worker reported, else (not yet run)
    what it will draw, when that can be told without a translator, else the client's."""
    r = job.request
    rendered = job.rendered or (None if r.multi_lingual else render(r))
    if rendered is None:
        return {"prompt": r.prompt, "negative_prompt": r.negative_prompt}
    return {"prompt": rendered.prompt, "negative_prompt": rendered.negative_prompt}


def option_meta(job: Job) -> dict[str, Any]:
    """The options as done (each as sdapi.catalog.options shows it), the size of the call the
    images were computed in (what reproduces their bytes), and why any asked option was not."""
    r, rendered = job.request, job.rendered
    data: dict[str, Any] = {}
    for option in OPTIONS:
        data |= option.meta(r)
    if call_size := job.call_size or r.call_size:
        data["call_size"] = call_size
    # multi_lingual: whether the prompt was translated, once the worker has told.
    translated = rendered.translated if rendered is not None else r.multi_lingual
    data["multi_lingual"] = _yes_no(translated)
    if rendered is not None and rendered.language is not None:
        data["language"] = rendered.language
    notes = dict(job.echo.notes)
    if rendered is not None and rendered.note is not None:
        notes["multi_lingual"] = rendered.note
    for name, text in notes.items():
        data[f"{name}_note"] = text
    return data


def upscale_meta(job: Job, links: Links, wire: Wire = V3) -> dict[str, Any]:
    """A super_resolution job's parameters; the keys every meta has, and the upscaler's."""
    r = job.request
    width_key, height_key = wire.size_keys
    scale = r.scale or UPSCALE_NATIVE_SCALE
    data: dict[str, Any] = {
        height_key: r.height,
        width_key: r.width,
        "url": _echo_image(job, links, "init_image", r.init_image),
        "scale": scale,
        # The x4 upscaler's own factor, and how other scales get there.
        "native_scale": UPSCALE_NATIVE_SCALE,
        "resize": "none" if scale == UPSCALE_NATIVE_SCALE else "lanczos",
        "face_enhance": "no",  # what was done: no face restorer runs
        "model_id": r.model,
        "model": r.model,
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt,
        "n_samples": r.samples,
        "steps": r.steps,
        "guidance_scale": r.guidance_scale,
        "noise_level": r.noise_level,
        "seed": r.seed,
        "scheduler": "default",
        "file_prefix": job.echo.file_prefix,
        "base64": _yes_no(any(n.endswith(".base64") for n in job.output_names)),
        "temp": _yes_no(job.keep_until is not None),
    }
    if job.echo.face_enhance:
        data["face_enhance_note"] = FACE_ENHANCE_NOTE
    if job.track_id is not None:
        data["track_id"] = job.track_id
    if job.webhook is not None:
        data["webhook"] = job.webhook
    return data


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _echo_image(job: Job, links: Links, field: str, stored: str | None) -> str | None:
    # The URL the client gave, or the stored copy's URL when it sent base64 (never echo base64).
    given = getattr(job.echo, field)
    return given if given else (links.image(stored) if stored else None)


def submitted(job: Job, eta: float, links: Links, wire: Wire = V3) -> dict[str, Any]:
    """The answer to a generation call: success if done within the sync window, else processing."""
    if job.status is JobStatus.PROCESSING or job.status is JobStatus.QUEUED:
        answer = {
            "status": "processing",
            "tip": wire.processing_tip,
            "eta": round(eta, 2),
            "messege": wire.processing_message,
            "message": wire.processing_message,
            "fetch_result": links.fetch(job),
            "id": job.id,
            "output": [],
            "meta": meta(job, links, wire),
            "webhook_status": job.webhook_status,
            "future_links": links.outputs(job),
        }
        return answer | _v6_links(job, links) if wire.v6 else answer
    return fetched(job, eta, links, position=None, wire=wire)


def _v6_links(job: Job, links: Links) -> dict[str, Any]:
    # v6 clients read proxy_links (a CDN copy on the real service): here the same URLs.
    return {"proxy_links": links.outputs(job), "tip_1": BACKGROUND_TIP}


def fetched(
    job: Job, eta: float, links: Links, *, position: int | None, wire: Wire = V3
) -> dict[str, Any]:
    """The answer to fetch: processing (with eta, progress, place in line), success or failed."""
    if job.status is JobStatus.SUCCESS:
        return _success(job, links, wire)
    if job.status is JobStatus.CANCELLED:
        return cancelled(job)
    if job.status is JobStatus.EXPIRED:
        return expired(job)
    if job.status.is_terminal:
        return failed(job)
    answer: dict[str, Any] = {
        "status": "processing",
        "messege": FETCH_PROCESSING_MESSAGE,
        "message": FETCH_PROCESSING_MESSAGE,
        "eta": round(eta, 2),
        "id": job.id,
        "output": [],
        "tip": FETCH_PROCESSING_TIP,
        "future_links": links.outputs(job),
        # Beyond v3: where the job stands (issue: honest waiting). Extra fields break no client.
        "progress": round(job.progress, 3),
        "webhook_status": job.webhook_status,
    }
    if position is not None:
        answer["queue_position"] = position
    return answer


def _success(job: Job, links: Links, wire: Wire) -> dict[str, Any]:
    outputs = links.outputs(job)
    answer = {
        "status": "success",
        "generationTime": job.generation_seconds or 0.0,
        "id": job.id,
        # super_resolution answers its one image as a string, which its clients use as is.
        "output": outputs[0] if job.request.task is Task.UPSCALE else outputs,
        "meta": meta(job, links, wire),
        "future_links": outputs,
        "webhook_status": job.webhook_status,
    }
    if wire.v6:
        answer["proxy_links"] = outputs
    if wire.v6 or job.request.safety_checker:
        answer["nsfw_content_detected"] = job.nsfw
    return answer


def cancelled(job: Job) -> dict[str, Any]:
    # Beyond v3 (which had no cancel): a status of its own, so no client mistakes it for a
    # failure worth retrying.
    return {
        "status": "cancelled",
        "id": job.id,
        "message": CANCELLED_MESSAGE,
        "messege": CANCELLED_MESSAGE,
        "output": [],
        "webhook_status": job.webhook_status,
    }


def expired(job: Job) -> dict[str, Any]:
    # An error, so clients that poll until success or error stop; its own text and `state`, so
    # nobody takes it for an unknown id or a failure worth retrying.
    return {
        "status": "error",
        "id": job.id,
        "message": EXPIRED_MESSAGE,
        "messege": EXPIRED_MESSAGE,
        "output": [],
        "state": "expired",
    }


def summary(job: Job, links: Links) -> dict[str, Any]:
    """One line of a key's job list (sdapi): where the job stands, and its images once done."""
    r = job.request
    return {
        "id": job.id,
        "status": str(job.status),
        "task": str(r.task),
        "prompt": r.prompt,
        "model": r.model,
        "width": r.width,
        "height": r.height,
        "samples": r.samples,
        "steps": r.steps,
        "seed": r.seed,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "progress": round(job.progress, 3),
        "generationTime": job.generation_seconds,
        "output": links.outputs(job) if job.status is JobStatus.SUCCESS else [],
        "error": job.error,
        "track_id": job.track_id,
        "webhook_status": job.webhook_status,
    }


def webhook_body(job: Job, links: Links) -> dict[str, Any]:
    """What a webhook POSTs (spec 12): the job's fetch answer with `track_id` beside it."""
    return {**fetched(job, 0.0, links, position=None), "track_id": job.track_id}


def cancel_answer(job: Job) -> dict[str, Any]:
    """The answer to a cancel: done at once (it was queued), under way (it is running), or too
    late (it had already ended)."""
    if job.status is JobStatus.CANCELLED:
        text, state = CANCELLED_MESSAGE, "cancelled"
    elif job.status is JobStatus.PROCESSING:
        text, state = CANCELLING_MESSAGE, "cancelling"
    else:
        return {
            "status": "error",
            "id": job.id,
            "message": TOO_LATE_MESSAGE,
            "messege": TOO_LATE_MESSAGE,
            "state": str(job.status),
        }
    return {"status": "success", "id": job.id, "message": text, "messege": text, "state": state}


def failed(job: Job) -> dict[str, Any]:
    return {
        "status": "failed",
        "id": job.id,
        "message": FAILED_MESSAGE,
        "messege": FAILED_MESSAGE,
        "output": [],
        # The reason, beside the exact wire text.
        "error": job.error or f"the job ended as {job.status}",
        "webhook_status": job.webhook_status,
    }
