"""What the contract suites share: submitting jobs the ways the tests need, and timings."""

from __future__ import annotations

from dataclasses import replace

from sdapi.jobs import Echo
from sdapi.queue.base import JobQueue, NewJob
from tests.helpers import make_request

LEASE = 30.0
HOOK = "https://example.com/hook"
#: A wait that returns well before this was woken, not timed out.
WAKE_TIMEOUT = 10.0


def submit(queue: JobQueue, owner: str = "key_a", **changes: object) -> int:
    """A job for `make_request(**changes)`, with every NewJob field set (they must come back)."""
    request = make_request(**changes)
    names = tuple(f"generations/x{i}.png" for i in range(request.samples))
    echo = Echo(file_prefix="x", init_image="https://example.com/a.png", notes={"vae": "why"})
    new = NewJob(owner, request, names, track_id="t1", echo=echo, base_url="http://h:1")
    return queue.enqueue(replace(new, webhook_progress=True)).id


def submit_job(queue: JobQueue, owner: str = "key_a", **fields: object) -> int:
    """A job for the plain request, with these NewJob fields (webhook, track_id, caps...)."""
    request = make_request()
    return queue.enqueue(NewJob(owner, request, ("generations/x0.png",), **fields)).id  # type: ignore[arg-type]


def run_to_success(queue: JobQueue, job_id: int) -> None:
    [job] = queue.claim("w1", lease_s=LEASE)
    assert job.id == job_id and job.lease_id
    assert queue.complete(job.id, job.lease_id, generation_seconds=1.0)
