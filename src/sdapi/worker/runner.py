"""The worker loop: claim a job, run it on the engine, store its images, record one outcome."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from sdapi.errors import DatabaseUnavailable, SdapiError
from sdapi.images import encode_png
from sdapi.jobs import GenerationRequest, Job
from sdapi.queue.base import JobQueue, WorkerInfo
from sdapi.storage.base import ImageStore
from sdapi.worker.lease import LeaseKeeper

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

#: The longest an idle worker waits before looking for work again (a cheap read when there is
#: none); a queue that can signal new work wakes it sooner.
IDLE_POLL_S = 0.1
#: How often an idle worker tells the queue it is alive.
PRESENCE_S = 5.0
#: While the database is unreachable, the worker retries after this long, doubling up to a cap.
OUTAGE_RETRY_S = 1.0
MAX_OUTAGE_RETRY_S = 15.0


class Generator(Protocol):
    """What the worker needs of an engine (sdapi.engine.engine.Engine; fakes in unit tests)."""

    model: str

    def load(self) -> None: ...

    def generate(
        self,
        request: GenerationRequest,
        images: Mapping[str, Image] | None = None,
        on_step: Callable[[int, int], bool] | None = None,
    ) -> list[Image]: ...


class LeaseLost(Exception):
    """Another worker owns the job now; this one drops its work without recording anything."""


class Worker:
    def __init__(
        self,
        queue: JobQueue,
        images: ImageStore,
        engine: Generator,
        *,
        lease_s: float,
        device: str = "cpu",
        worker_id: str | None = None,
    ) -> None:
        self.queue = queue
        self.images = images
        self.engine = engine
        self.lease_s = lease_s
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.info = WorkerInfo(self.id, socket.gethostname(), os.getpid(), device, engine.model)

    def run(self, stop: threading.Event) -> None:
        """Serve jobs until `stop` is set; the job in hand is finished first."""
        self.queue.register_worker(self.info)
        try:
            self.engine.load()
            log.info("worker %s ready (model %s)", self.id, self.engine.model)
            self.queue.worker_seen(self.id, "ready")
            self._serve(stop)
        finally:
            try:
                self.queue.remove_worker(self.id)
            except DatabaseUnavailable:
                log.warning("worker %s: could not deregister; it will age out", self.id)

    def _serve(self, stop: threading.Event) -> None:
        last_seen = time.monotonic()
        outage_wait = OUTAGE_RETRY_S
        while not stop.is_set():
            try:
                if self.run_once():
                    continue
                if time.monotonic() - last_seen > PRESENCE_S:
                    self.queue.worker_seen(self.id, "ready")
                    last_seen = time.monotonic()
                self.queue.wait_for_work(IDLE_POLL_S)
                outage_wait = OUTAGE_RETRY_S
            except DatabaseUnavailable as exc:
                # Ride the outage out: a job in hand that could not be recorded comes back
                # when its lease expires, and is rerun (its files are rewritten, same names).
                log.warning(
                    "worker %s: %s; retrying in %.0f s", self.id, exc.detail or exc, outage_wait
                )
                stop.wait(outage_wait)
                outage_wait = min(outage_wait * 2, MAX_OUTAGE_RETRY_S)

    def run_once(self) -> bool:
        """Claim and run one job; False when the queue had nothing for us."""
        jobs = self.queue.claim(self.id, lease_s=self.lease_s, limit=1, models=[self.engine.model])
        for job in jobs:
            self.queue.worker_seen(self.id, "busy")
            self.process(job)
        return bool(jobs)

    def process(self, job: Job) -> None:
        assert job.lease_id is not None
        log.info("job %s: started (attempt %s)", job.id, job.attempts)
        started = time.monotonic()
        with LeaseKeeper(self.queue, job.lease_id, self.lease_s) as lease:
            try:
                self._generate(job, lease)
            except LeaseLost:
                log.warning("job %s: lease lost; another worker has it", job.id)
                return
            except Exception as exc:
                self._fail(job, exc)
                return
        seconds = time.monotonic() - started
        if self.queue.complete(job.id, job.lease_id, generation_seconds=seconds):
            log.info("job %s: success in %.2f s", job.id, seconds)
        else:
            log.warning("job %s: finished but its lease had moved on; result dropped", job.id)

    def _generate(self, job: Job, lease: LeaseKeeper) -> None:
        def on_step(done: int, total: int) -> bool:
            lease.progress = done / max(total, 1)
            return not lease.lost.is_set()

        inputs = self._load_inputs(job.request)
        try:
            outputs = self.engine.generate(job.request, inputs, on_step)
        except Exception:
            if lease.lost.is_set():  # the engine stopped because on_step said so
                raise LeaseLost from None
            raise
        if lease.lost.is_set():
            raise LeaseLost
        # Names were fixed at submit time; a retry after a crash rewrites the same files.
        for name, image in zip(job.output_names, outputs, strict=True):
            self.images.put(name, encode_png(image))
        log.info("job %s: stored %d images", job.id, len(outputs))

    def _load_inputs(self, request: GenerationRequest) -> dict[str, Image]:
        from io import BytesIO

        from PIL import Image as PILImage

        inputs: dict[str, Image] = {}
        for role, name in (("init", request.init_image), ("mask", request.mask_image)):
            if name is None:
                continue
            data = self.images.get(name)
            if data is None:
                raise RuntimeError(f"the stored {role} image {name} is missing")
            inputs[role] = PILImage.open(BytesIO(data)).convert("L" if role == "mask" else "RGB")
        return inputs

    def _fail(self, job: Job, exc: Exception) -> None:
        assert job.lease_id is not None
        reason = exc.detail if isinstance(exc, SdapiError) and exc.detail else str(exc)
        error = f"{type(exc).__name__}: {reason}"[:500]
        log.error("job %s: failed: %s", job.id, error, exc_info=not isinstance(exc, SdapiError))
        self.queue.fail(job.id, job.lease_id, error=error)
