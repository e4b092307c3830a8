"""Turning a checked request into a durable job, and waiting for it within the sync window.

Everything that can fail because of the client (an image URL that is refused, base64 that does
not decode) happens before the job is written, so a bad request leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

from sdapi.api.v3.protocol import GenerationParams
from sdapi.auth.keys import ApiKey
from sdapi.backends import Backends
from sdapi.images import encode_png, load_image_input
from sdapi.jobs import GenerationRequest, Job, Task
from sdapi.queue.base import NewJob
from sdapi.safeurl import UrlPolicy
from sdapi.settings import Settings

#: Seeds picked for the client stay in the 32-bit range the real API shows.
RANDOM_SEED_RANGE = 2**32
#: Polling the queue while a generation call waits: start fast, then back off.
FIRST_POLL_S = 0.02
MAX_POLL_S = 0.25


class Submissions:
    def __init__(self, settings: Settings, backends: Backends, policy: UrlPolicy) -> None:
        self.settings = settings
        self.backends = backends
        self.policy = policy

    def create(self, owner: ApiKey, task: Task, params: GenerationParams) -> Job:
        """Store the inputs and enqueue the job (blocking: fetches URLs, writes files)."""
        prefix = str(uuid.uuid4())
        stored = self._store_inputs(prefix, params)
        try:
            return self.backends.queue.enqueue(self._new_job(owner, task, params, prefix, stored))
        except BaseException:
            for name in stored.values():
                self.backends.images.delete(name)
            raise

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

    def _new_job(
        self,
        owner: ApiKey,
        task: Task,
        params: GenerationParams,
        prefix: str,
        stored: dict[str, str],
    ) -> NewJob:
        seed = params.seed if params.seed is not None else secrets.randbelow(RANDOM_SEED_RANGE)
        request = GenerationRequest(
            task=task,
            model=params.model_id or self.settings.default_model,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            width=params.width,
            height=params.height,
            samples=params.samples,
            steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            seed=seed,
            scheduler=params.scheduler,
            strength=params.strength if task is not Task.TEXT2IMG else None,
            init_image=stored.get("init_image"),
            mask_image=stored.get("mask_image"),
        )
        echo = {"file_prefix": prefix}
        for field in stored:  # echo URLs the client gave; base64 is echoed as our stored copy
            value = getattr(params, field)
            if value.startswith(("http://", "https://")):
                echo[field] = value
        return NewJob(
            owner=owner.id,
            request=request,
            output_names=tuple(f"generations/{prefix}-{i}.png" for i in range(params.samples)),
            webhook=params.webhook,
            track_id=params.track_id,
            echo=echo,
        )

    async def wait(self, job: Job, timeout: float) -> Job:
        """The job once it has ended, or as it stands when `timeout` seconds have passed."""
        deadline = time.monotonic() + timeout
        delay = FIRST_POLL_S
        while not job.status.is_terminal and time.monotonic() < deadline:
            await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 1.5, MAX_POLL_S)
            job = await asyncio.to_thread(self.backends.queue.get, job.id) or job
        return job
