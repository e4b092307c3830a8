"""The Measurements port on every backend: the /metrics counters and the calls' costs."""

from __future__ import annotations

import pytest

from sdapi import metrics
from sdapi.catalog.work import batch_key
from sdapi.costs import OBSERVATIONS, PRIOR_CPU, Call, Cost, fit
from sdapi.queue.base import ANY_KEY, JobQueue
from tests.contract.common import (
    HOOK,
    run_to_success,
    submit_job,
)
from tests.helpers import make_request


def test_costs_are_learned_from_the_calls_workers_record(queue: JobQueue) -> None:
    key, model_key = batch_key(make_request()), "sdapi-tiny|text2img"
    assert queue.costs([key, model_key, ANY_KEY]) == {}
    calls = [Call(units, 20, 0.2 + 0.03 * 20 + 0.4 * units) for units in (0.1, 0.5, 2.0)]
    for call in calls:
        queue.record_call(key, model_key, call, cap=4, prior=PRIOR_CPU)
    learned = queue.costs([key, model_key, ANY_KEY, "never-seen"])
    assert set(learned) == {key, model_key, ANY_KEY}
    expected = fit(calls, PRIOR_CPU)
    assert learned[model_key].cost == pytest.approx(expected)
    assert learned[ANY_KEY].cost == pytest.approx(expected)
    assert learned[key].cost is None and learned[key].scale == pytest.approx(1.0, rel=0.05)
    assert (learned[key].cap, learned[model_key].cap) == (4, 1)


def test_only_the_latest_calls_are_kept(queue: JobQueue) -> None:
    key, model_key = batch_key(make_request()), "sdapi-tiny|text2img"
    for _ in range(OBSERVATIONS):
        queue.record_call(key, model_key, Call(1.0, 20, 100.0), cap=1, prior=PRIOR_CPU)
    for _ in range(OBSERVATIONS):  # the machine got 100x faster: the old calls are forgotten
        queue.record_call(key, model_key, Call(1.0, 20, 1.0), cap=1, prior=PRIOR_CPU)
    cost = queue.costs([model_key])[model_key].cost
    assert isinstance(cost, Cost) and cost.seconds(1.0, 20) == pytest.approx(1.0, rel=0.01)


def test_metrics_count_each_end_once_in_its_own_transaction(queue: JobQueue) -> None:
    done = submit_job(queue, webhook=HOOK)
    run_to_success(queue, done)
    cancelled = submit_job(queue)
    queue.cancel(cancelled)
    queue.cancel(cancelled)  # no second end, no second count
    [event] = queue.claim_webhooks(limit=1, lease_s=60)
    queue.record_webhook(event.event_id, delivered=False, error="500", retry_at=None)
    queue.record_metrics(metrics.batch(3))
    got = {(name, labels): value for name, labels, value in queue.metrics()}
    assert got[("sdapi_jobs_finished_total", 'status="success"')] == 1
    assert got[("sdapi_jobs_finished_total", 'status="cancelled"')] == 1
    size = 'model="sdapi-tiny",size="64x64"'
    assert got[("sdapi_generation_seconds_count", size)] == 1
    assert got[("sdapi_generation_seconds_sum", size)] == 1.0
    assert got[("sdapi_generation_seconds_bucket", size + ',le="1"')] == 1
    assert got[("sdapi_generation_seconds_bucket", size + ',le="0.5"')] == 0
    assert got[("sdapi_webhook_deliveries_total", 'outcome="failed"')] == 1
    assert got[("sdapi_batch_images_sum", "")] == 3
