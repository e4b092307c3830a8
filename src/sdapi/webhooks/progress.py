"""Progress webhooks: throttled, best-effort POSTs while a job runs, for jobs that asked.

A job submitted with `webhook_progress: "yes"` (sdapi, beyond the wire) gets a signed
`{"status": "processing", "id", "progress", "track_id"}` POST to its webhook whenever its
progress moved on by a step since the last one, at most every `every_s` seconds. Unlike the final
webhook these go through no outbox and are never retried: a missed progress event is made good by
the next one, or by the final event, which is durable.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from sdapi.background import Loop
from sdapi.jobs import Job
from sdapi.queue.base import Jobs
from sdapi.safeurl import UrlPolicy, fetch
from sdapi.webhooks.dispatcher import Send, SignedPost, json_body, webhook_policy

#: A receiver gets this long to take a progress event: there is always a newer one coming.
PROGRESS_TIMEOUT_S = 5.0
#: Progress must have moved this much since the last event for another to go out.
MIN_STEP = 0.1
#: Running jobs looked at per round (more than any deployment runs at once).
RUNNING_LIMIT = 500


def wants_progress(job: Job) -> bool:
    return job.webhook is not None and job.webhook_progress


class ProgressNotifier:
    def __init__(
        self,
        queue: Jobs,
        secret: str,
        allow: tuple[str, ...],
        *,
        every_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        send: Send = fetch,
    ) -> None:
        self.queue = queue
        self.secret = secret
        self.policy: UrlPolicy = webhook_policy(allow, PROGRESS_TIMEOUT_S)
        self.clock = clock
        self._send = send
        #: Progress last sent per running job; forgotten once the job stops running.
        self._sent: dict[int, float] = {}
        #: One POST in flight per job at most: a slow receiver only ever holds one thread.
        self._busy: set[int] = set()
        self._lock = threading.Lock()
        self._loop = Loop("progress-webhooks", self.step, every_s)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def step(self) -> int:
        """Send what is due; always 0, so the loop waits `every_s` before the next round."""
        running = [job for job in self.queue.running(limit=RUNNING_LIMIT) if wants_progress(job)]
        with self._lock:
            self._sent = {job.id: self._sent.get(job.id, -1.0) for job in running}
        for job in running:
            if self._due(job):
                threading.Thread(target=self._post, args=(job,), daemon=True).start()
        return 0

    def _due(self, job: Job) -> bool:
        with self._lock:
            if job.id in self._busy or job.progress - self._sent[job.id] < MIN_STEP:
                return False
            self._busy.add(job.id)
            self._sent[job.id] = job.progress
            return True

    def _post(self, job: Job) -> None:
        payload = {
            "status": "processing",
            "id": job.id,
            "progress": round(job.progress, 3),
            "track_id": job.track_id,
        }
        post = SignedPost(
            job.webhook or "", f"msg_{uuid.uuid4().hex}", json_body(payload), int(self.clock())
        )
        try:
            post.send(self._send, self.policy, self.secret)  # best effort: the outcome is dropped
        finally:
            with self._lock:
                self._busy.discard(job.id)
