"""The Workers port on every backend: workers announce themselves and count as live while seen."""

from __future__ import annotations

import pytest

from sdapi.catalog.work import work_units
from sdapi.queue.base import JobQueue, WorkerInfo
from tests.contract.common import (
    LEASE,
    submit,
)
from tests.helpers import FakeClock, make_request


def test_stats_and_live_workers(queue: JobQueue, clock: FakeClock) -> None:
    submit(queue)
    submit(queue)
    queue.claim("w", lease_s=LEASE)
    queue.register_worker(WorkerInfo("w", "host", 1, "cpu", "sdapi-tiny"))
    stats = queue.stats()
    assert (stats.queued, stats.processing, stats.live_workers) == (1, 1, 1)
    assert stats.pending_work == pytest.approx(2 * work_units(make_request()))
    line = queue.position(2)
    assert line is not None and line.workers == 1
    clock.advance(60)
    assert queue.stats().live_workers == 0
    queue.worker_seen("w", "ready")
    assert queue.stats().live_workers == 1
    queue.remove_worker("w")
    assert queue.stats().live_workers == 0


def test_a_worker_is_live_while_seen_and_gone_once_removed(
    queue: JobQueue, clock: FakeClock
) -> None:
    assert queue.stats().live_workers == 0
    queue.register_worker(WorkerInfo("a", "host", 1, "cpu", "sdapi-tiny"))
    queue.register_worker(WorkerInfo("b", "host", 2, "cuda:0", "sdapi-tiny"))
    queue.register_worker(WorkerInfo("a", "host", 3, "cpu", "sdapi-tiny"))  # restarted: one
    assert queue.stats().live_workers == 2
    clock.advance(20)
    queue.worker_seen("a", "busy")
    clock.advance(20)  # b unseen for 40 s: stale
    assert queue.stats().live_workers == 1
    queue.remove_worker("a")
    queue.remove_worker("never-registered")
    assert queue.stats().live_workers == 0
