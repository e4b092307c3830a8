"""The worker loop: claim a batch of compatible jobs, run it on the engine, store the images,
record one outcome per job."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sdapi import metrics
from sdapi.batching import cap_for
from sdapi.catalog.prompts import Translate, drawn, has_prompt_options, render
from sdapi.catalog.work import batch_key, call_steps, work_units
from sdapi.costs import Call, prior_for
from sdapi.engine.cache import EngineCache
from sdapi.errors import DatabaseUnavailable, SdapiError
from sdapi.images import encode_output
from sdapi.jobs import GenerationRequest, Job, Rendered
from sdapi.logs import job_context
from sdapi.queue.base import JobQueue, WorkerInfo, rate_key
from sdapi.storage.base import ImageStore
from sdapi.worker.affinity import FAIR_EVERY_S, Affinity
from sdapi.worker.lease import LeaseKeeper

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

#: The longest an idle worker waits before looking for work again (a cheap read when there is
#: none). Every queue backend wakes it the moment a job arrives: this is only the pace at which
#: an idle worker notices leases that expired (a dead worker's jobs).
IDLE_WAIT_S = 1.0
#: How often an idle worker tells the queue it is alive.
PRESENCE_S = 5.0
#: While the database is unreachable, the worker retries after this long, doubling up to a cap.
OUTAGE_RETRY_S = 1.0
MAX_OUTAGE_RETRY_S = 15.0


class Generator(Protocol):
    """What the worker needs of an engine (sdapi.engine.engine.Engine; fakes in unit tests)."""

    model: str

    def load(self) -> None: ...

    def memory_bytes(self) -> int: ...

    def unload(self) -> None: ...

    def generate_batch_checked(
        self,
        requests: Sequence[GenerationRequest],
        images: Sequence[Mapping[str, Image]],
        rows: int | None = None,
        on_step: Callable[[int, int], bool] | None = None,
    ) -> tuple[list[list[Image]], list[list[bool]]]:
        """Each request's images, and per image whether the safety checker replaced it: one
        call of them all, or calls of exactly `rows` images (padded)."""
        ...


class BatchStopped(Exception):
    """Every job of the batch was cancelled or taken over by another worker."""


class Worker:
    def __init__(
        self,
        queue: JobQueue,
        images: ImageStore,
        engines: EngineCache[Generator],
        models: Sequence[str],
        *,
        lease_s: float,
        device: str = "cpu",
        max_batch: int = 0,
        batch_wait: float = 0.0,
        fair_every_s: float = FAIR_EVERY_S,
        worker_id: str | None = None,
        translate: Translate | None = None,
    ) -> None:
        self.queue = queue
        self.images = images
        self.engines = engines
        #: Served models; the first is loaded at start.
        self.models = list(models)
        self.affinity = Affinity(self.models, fair_every_s)
        self.lease_s = lease_s
        self.device = device
        self.max_batch = max_batch
        #: How long a batch that found company waits for more of a burst still arriving.
        self.batch_wait = batch_wait
        #: The translator behind multi_lingual (sdapi.catalog.prompts.render), if any.
        self.translate = translate
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        #: Set when a shutdown's drain time is up: the batch in hand stops at its next step and
        #: its jobs go back to the queue for another worker.
        self.abandon = threading.Event()
        host = socket.gethostname()
        self.info = WorkerInfo(self.id, host, os.getpid(), device, ",".join(self.models))

    @classmethod
    def for_engine(
        cls, queue: JobQueue, images: ImageStore, engine: Generator, **options: Any
    ) -> Worker:
        """A worker serving one ready engine (tests, embedding)."""
        engines = EngineCache[Generator](lambda model: engine, budget_bytes=0)
        return cls(queue, images, engines, [engine.model], **options)

    def run(self, stop: threading.Event) -> None:
        """Serve jobs until `stop` is set; the job in hand is finished first."""
        self.queue.register_worker(self.info)
        try:
            self.engines.get(self.models[0])
            log.info("worker %s ready (models %s)", self.id, ", ".join(self.models))
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
                self.queue.wait_for_work(IDLE_WAIT_S)
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
        """Claim and run one batch; False when the queue had nothing for us."""
        for models in self.affinity.claim_order(self.engines.loaded):
            jobs = self.queue.claim(self.id, lease_s=self.lease_s, models=models)
            if jobs:
                self.queue.worker_seen(self.id, "busy")
                self.process(jobs + self._gather(jobs[0]))
                return True
        return False

    def cap(self, request: GenerationRequest) -> int:
        """The most images a call for the request's batch key makes (sdapi.batching)."""
        return cap_for(request, self.device, self.max_batch)

    def _gather(self, head: Job) -> list[Job]:
        """The queued jobs with the head's batch key that fit in its call: none waits for
        company. Only when some were found, so a burst is arriving, does the batch wait
        `batch_wait` for more of it, if it still has room."""
        room = self.cap(head.request) - head.request.samples
        gathered: list[Job] = []
        for attempt in range(2):
            if room <= 0 or (attempt and not gathered):
                break
            if attempt and self.batch_wait:
                time.sleep(self.batch_wait)
            more = self.queue.claim(
                self.id,
                lease_s=self.lease_s,
                images=room,
                models=[head.request.model],
                batch_key=batch_key(head.request),
            )
            gathered += more
            room -= sum(job.request.samples for job in more)
        return gathered

    def process(self, jobs: list[Job]) -> None:
        """Run compatible jobs as one batch; each ends with its own outcome."""
        with job_context(job.id for job in jobs):
            self._process(jobs)

    def _process(self, jobs: list[Job]) -> None:
        ids = [job.id for job in jobs]
        log.info("jobs %s: started (attempts %s)", ids, [job.attempts for job in jobs])
        started = time.monotonic()
        with LeaseKeeper(self.queue, jobs, self.lease_s) as keeper:
            rendered = self._render(jobs)
            try:
                outputs, flags = self._generate(jobs, rendered, keeper)
            except BatchStopped:
                if self.abandon.is_set():
                    self._release(jobs)
                else:
                    log.warning("jobs %s: stopped (%s)", ids, [keeper.stopped(j) for j in jobs])
                return
            except Exception as exc:
                for job in jobs:
                    self._fail(job, exc)
                return
            stored = [
                job
                for job, images in zip(jobs, outputs, strict=True)
                if self._store(job, images, keeper)
            ]
        seconds = time.monotonic() - started
        nsfw = {job.id: any(flagged) for job, flagged in zip(jobs, flags, strict=True)}
        self._complete(stored, seconds, self._call_size(jobs), nsfw, rendered)
        self._learn(jobs, seconds)
        self._count_batch(jobs)

    def _render(self, jobs: list[Job]) -> dict[int, Rendered | None]:
        """The prompts each job is drawn from, where its prompt options rewrite them
        (sdapi.catalog.prompts: translated, styled, enhanced); None where they stay as sent."""
        return {
            job.id: render(job.request, self.translate) if has_prompt_options(job.request) else None
            for job in jobs
        }

    def _generate(
        self, jobs: list[Job], rendered: Mapping[int, Rendered | None], keeper: LeaseKeeper
    ) -> tuple[list[list[Image]], list[list[bool]]]:
        """Each job's images, and which of them the safety checker flagged (and replaced)."""

        def on_step(done: int, total: int) -> bool:
            keeper.progress = done / max(total, 1)
            return not self._must_stop(keeper)

        requests = [drawn(job.request, rendered[job.id]) for job in jobs]
        inputs = [self._load_inputs(request) for request in requests]
        try:
            engine = self.engines.get(requests[0].model)
            # Padded only when the requests ask for an exact call size (sdapi.batching).
            rows = requests[0].call_size
            return engine.generate_batch_checked(requests, inputs, rows, on_step)
        except Exception:
            if self._must_stop(keeper):  # the engine stopped because on_step said so
                raise BatchStopped from None
            raise

    def _must_stop(self, keeper: LeaseKeeper) -> bool:
        return keeper.all_stopped.is_set() or self.abandon.is_set()

    def _release(self, jobs: list[Job]) -> None:
        """Shutting down mid-batch: hand the jobs back, so another worker starts them now
        instead of after the lease runs out, and the attempt is not held against them."""
        for lease_id in dict.fromkeys(job.lease_id or "" for job in jobs):
            released = self.queue.release(lease_id)
            log.warning("jobs %s: handed back to the queue (worker shutting down)", released)

    def _store(self, job: Job, images: list[Image], keeper: LeaseKeeper) -> bool:
        """Write the job's images under the names fixed at submit time; False if not ours."""
        if reason := keeper.stopped(job):
            log.warning("job %s: %s; its images are dropped", job.id, reason)
            return False
        try:
            for name, image in zip(job.output_names, images, strict=True):
                self.images.put(name, encode_output(name, image))
        except Exception as exc:
            self._fail(job, exc)
            return False
        log.info("job %s: stored %d images", job.id, len(images))
        return True

    def _count_batch(self, jobs: list[Job]) -> None:
        """The batch's size for /metrics; losing it must never cost a job anything."""
        try:
            self.queue.record_metrics(metrics.batch(sum(job.request.samples for job in jobs)))
        except Exception:
            log.warning("jobs %s: could not record the batch metrics", [j.id for j in jobs])

    @staticmethod
    def _call_size(jobs: list[Job]) -> int:
        """Images the batch's call computed, padding included (a batch is one call)."""
        return jobs[0].request.call_size or sum(job.request.samples for job in jobs)

    def _complete(
        self,
        jobs: list[Job],
        seconds: float,
        call_size: int,
        nsfw: Mapping[int, bool],
        rendered: Mapping[int, Rendered | None],
    ) -> None:
        """Record success: every job of the batch ended when its call did."""
        for job in jobs:
            if self.queue.complete(
                job.id,
                job.lease_id or "",
                generation_seconds=seconds,
                call_size=call_size,
                nsfw=nsfw[job.id],
                rendered=rendered[job.id],
            ):
                log.info("job %s: success in %.2f s", job.id, seconds)
            else:
                log.warning("job %s: finished but its lease had moved on; result dropped", job.id)

    def _learn(self, jobs: list[Job], seconds: float) -> None:
        """Teach the queue what the call cost (sdapi.costs), for the ETAs; losing it must never
        cost a job anything."""
        head = jobs[0].request
        padded = self._call_size(jobs) / sum(job.request.samples for job in jobs)
        units = sum(work_units(job.request) for job in jobs) * padded
        call = Call(units, call_steps(head), seconds)
        try:
            self.queue.record_call(
                batch_key(head),
                rate_key(head.model, head.task),
                call,
                cap=self.cap(head),
                prior=prior_for(self.device),
            )
        except Exception:
            log.warning("jobs %s: could not record the call's time", [j.id for j in jobs])

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
