"""Turning a checked request into a durable job, and waiting for it within the sync window.

Everything that can fail because of the client (an image URL that is refused, base64 that does
not decode) happens before the job is written, so a bad request leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace

from sdapi.api.v3.protocol import GenerationParams, UpscaleParams, check_upscale_input
from sdapi.api.watch import SAFETY_POLL_S, JobWatch
from sdapi.auth.keys import ApiKey
from sdapi.backends import Backends
from sdapi.errors import RateLimited, ServerBusy, UnsafeUrl, ValidationFailed
from sdapi.eta import wait_for
from sdapi.images import encode_png, load_image_input
from sdapi.jobs import Echo, GenerationRequest, Job, Task
from sdapi.logs import job_context
from sdapi.queue.base import NewJob, QueueFull
from sdapi.safeurl import UrlPolicy, parse_url, vet_literal
from sdapi.settings import Settings

log = logging.getLogger(__name__)

#: Seeds picked for the client stay in the 32-bit range the real API shows.
RANDOM_SEED_RANGE = 2**32
#: Retry-after for a full queue: the 2026 wire's 30 s, or sooner when a job ends sooner.
QUEUE_RETRY_S = 30.0


def output_names(
    prefix: str, samples: int, base64: bool, keep_until: float | None
) -> tuple[str, ...]:
    """Output names fixed at submit time; temporary ones carry the time their links end."""
    ext = "base64" if base64 else "png"
    folder = "generations" if keep_until is None else f"temp/{int(keep_until)}"
    sep = "/" if keep_until is None else "-"
    return tuple(f"{folder}{sep}{prefix}-{i}.{ext}" for i in range(samples))


class Submissions:
    def __init__(
        self,
        settings: Settings,
        backends: Backends,
        policy: UrlPolicy,
        draining: threading.Event | None = None,
        watch: JobWatch | None = None,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.policy = policy
        #: Set when the server shuts down: no new jobs, and no more waiting for running ones.
        self.draining = draining or threading.Event()
        #: Wakes `wait` when its job changes (started by the app; without one, `wait` polls).
        self.watch = watch or JobWatch(backends.queue, self.draining)

    def create(self, owner: ApiKey, task: Task, params: GenerationParams, base_url: str) -> Job:
        """Store the inputs and enqueue the job (blocking: fetches URLs, writes files).

        A repeated track_id (within `--track-id-window`) answers the first job; the inputs this
        request stored are then removed again.
        """
        self._check_open(params.webhook)
        prefix = str(uuid.uuid4())
        stored = self._store_inputs(prefix, params)
        given = {field: getattr(params, field) for field in stored}

        def build() -> NewJob:
            request = self._request(task, params, stored)
            new = self._new_job(owner, request, params, prefix, given, base_url)
            return replace(new, echo=replace(new.echo, notes=params.options.notes))

        return self._enqueue(owner, stored, build)

    def create_upscale(self, owner: ApiKey, params: UpscaleParams, base_url: str) -> Job:
        """A super_resolution job: the input is fetched, its size checked (it decides the
        output's) and stored before the job is, as for `create`."""
        self._check_open(params.webhook)
        prefix = str(uuid.uuid4())
        image = load_image_input(params.url, self.policy, field="url")
        check_upscale_input(image.size)
        name = f"inputs/{prefix}-init.png"
        self.backends.images.put(name, encode_png(image))
        stored = {"init_image": name}

        def build() -> NewJob:
            request = self._upscale_request(params, name, image.size)
            given = {"init_image": params.url}
            new = self._new_job(owner, request, params, prefix, given, base_url)
            # Asked but not done: kept so the answer's meta can say so.
            return replace(new, echo=replace(new.echo, face_enhance=params.face_enhance))

        return self._enqueue(owner, stored, build)

    def _check_open(self, webhook: str | None) -> None:
        if self.draining.is_set():
            raise ServerBusy("The server is shutting down, try again shortly", retry_after=5)
        if webhook is not None:
            self._check_webhook(webhook)

    def _enqueue(self, owner: ApiKey, stored: dict[str, str], build: Callable[[], NewJob]) -> Job:
        """Enqueue the job `build` makes; the stored inputs go again if it is not queued."""
        try:
            new = build()
            job = self.backends.queue.enqueue(new)
        except QueueFull as full:
            self._drop(stored.values())
            raise self._refusal(full, owner) from None
        except BaseException:
            self._drop(stored.values())
            raise
        with job_context([job.id]):
            if job.output_names != new.output_names:
                self._drop(stored.values())
                log.info("repeated track_id %r: answering the existing job", new.track_id)
            else:
                r = job.request
                log.info("queued: %s %s %dx%d x%d", r.task, r.model, r.width, r.height, r.samples)
        return job

    def _refusal(self, full: QueueFull, owner: ApiKey) -> RateLimited:
        """The wire's answer to a full queue, with an honest time to try again: when the
        oldest of the key's live jobs (or the next job overall) should be done."""
        jobs = self.backends.queue.recent(owner.id, limit=full.limit) if full.scope == "key" else []
        live = [job for job in jobs if not job.status.is_terminal]
        seconds = wait_for(self.backends.queue, live[-1]).eta if live else QUEUE_RETRY_S
        if full.scope == "key":
            text = f"Rate limit exceeded. Maximum {full.limit} queued requests allowed."
            return RateLimited(text, retry_after=min(seconds, QUEUE_RETRY_S))
        return ServerBusy(retry_after=QUEUE_RETRY_S, detail=f"{full.limit} jobs are waiting")

    def _drop(self, names: Iterable[str]) -> None:
        for name in names:
            self.backends.images.delete(name)

    def _check_webhook(self, url: str) -> None:
        """Refuse at once what can never be delivered; names are checked again when sending."""
        try:
            vet_literal(parse_url(url).host, self.policy)
        except UnsafeUrl as exc:
            raise ValidationFailed.one(
                "webhook", f"The webhook URL is not allowed: {exc.detail}."
            ) from None

    def _store_inputs(self, prefix: str, params: GenerationParams) -> dict[str, str]:
        """Fetch or decode each input image and keep a PNG copy; the worker reads only these."""
        stored: dict[str, str] = {}
        for field, value in (("init_image", params.init_image), ("mask_image", params.mask_image)):
            if value is None:
                continue
            image = load_image_input(value, self.policy, field=field)
            name = f"inputs/{prefix}-{field.removesuffix('_image')}.png"
            self.backends.images.put(name, encode_png(image))
            stored[field] = name
        return stored

    def _request(
        self, task: Task, params: GenerationParams, stored: dict[str, str]
    ) -> GenerationRequest:
        return GenerationRequest(
            task=task,
            model=params.model_id or self.settings.default_model,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            width=params.width,
            height=params.height,
            samples=params.samples,
            steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            seed=_seed(params),
            scheduler=params.scheduler,
            safety_checker_type=params.safety_checker_type,
            strength=params.strength if task is not Task.TEXT2IMG else None,
            init_image=stored.get("init_image"),
            mask_image=stored.get("mask_image"),
            **params.options.request,
        )

    def _upscale_request(
        self, params: UpscaleParams, stored: str, size: tuple[int, int]
    ) -> GenerationRequest:
        """Width and height are the output's: the input's times the scale."""
        return GenerationRequest(
            task=Task.UPSCALE,
            model=self.settings.upscaler,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            width=size[0] * params.scale,
            height=size[1] * params.scale,
            samples=1,
            steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            seed=_seed(params),
            init_image=stored,
            scale=params.scale,
            noise_level=params.noise_level,
        )

    def _new_job(
        self,
        owner: ApiKey,
        request: GenerationRequest,
        params: GenerationParams | UpscaleParams,
        prefix: str,
        given: dict[str, str],
        base_url: str,
    ) -> NewJob:
        """The job around `request`; `given` holds the input images as the client sent them,
        `base_url` where it sent them (its webhook's links)."""
        now = time.time()
        # URLs are echoed back; base64 is answered by its stored copy's link.
        urls = {f: v for f, v in given.items() if v.startswith(("http://", "https://"))}
        echo = Echo(prefix, urls.get("init_image"), urls.get("mask_image"))
        keep_until = now + self.settings.temp_ttl if params.temp else None
        return NewJob(
            owner=owner.id,
            request=request,
            output_names=output_names(prefix, request.samples, params.base64, keep_until),
            webhook=params.webhook,
            track_id=params.track_id,
            echo=echo,
            base_url=base_url,
            webhook_progress=params.webhook_progress,
            deadline_at=self._deadline(params, now),
            keep_until=keep_until,
            dedupe_since=now - window if (window := self.settings.track_id_window) else None,
            owner_cap=self._owner_cap(owner),
            queue_cap=self.settings.max_queued or None,
        )

    def _owner_cap(self, owner: ApiKey) -> int | None:
        own = owner.limits.max_queued
        cap = self.settings.max_queued_per_key if own is None else own
        return cap or None

    def _deadline(self, params: GenerationParams | UpscaleParams, now: float) -> float | None:
        """The sooner of the request's own deadline and the server's, if either is set."""
        limits = [d for d in (params.deadline, self.settings.job_deadline) if d]
        return now + min(limits) if limits else None

    async def wait(self, job: Job, timeout: float) -> Job:
        """The job once it has ended, or as it stands when `timeout` seconds have passed; woken
        by the queue when the job changes (sdapi.api.watch)."""
        if job.status.is_terminal or timeout <= 0:
            return job
        deadline = time.monotonic() + timeout
        with self.watch.waiting(job.id) as changed:
            while True:
                now = await asyncio.to_thread(self.backends.queue.get, job.id)
                job = now or job
                left = deadline - time.monotonic()
                # Shutting down: the job is durable, answer processing.
                if job.status.is_terminal or left <= 0 or self.draining.is_set():
                    return job
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(left, SAFETY_POLL_S))
                changed.clear()


def _seed(params: GenerationParams | UpscaleParams) -> int:
    """The client's seed, or one picked now: decided at submit so a retried job is the same."""
    return params.seed if params.seed is not None else secrets.randbelow(RANDOM_SEED_RANGE)
