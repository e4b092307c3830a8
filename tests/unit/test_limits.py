"""Limits: rate per key, caps on live jobs, failed key attempts, pixels per job; all answered in
the wire format and never a 500."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sdapi.api.v3.protocol import read_generation
from sdapi.auth.keys import KeyLimits
from sdapi.jobs import Task
from sdapi.limits import FailureThrottle, RateLimiter
from sdapi.settings import Settings
from tests.helpers import FakeClock
from tests.unit.test_api_v3 import Server, start_server

SMALL = {"prompt": "p", "width": 64, "height": 64, "instant_response": True}


def test_rate_limiter_allows_a_minutes_burst_then_refills() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert all(limiter.take("k", 6) is None for _ in range(6))
    wait = limiter.take("k", 6)
    assert wait == pytest.approx(10)  # one request every 10 s at 6 per minute
    clock.advance(10)
    assert limiter.take("k", 6) is None
    assert limiter.take("other", 6) is None  # buckets are per key


def test_failure_throttle_blocks_an_address_until_its_failures_age_out() -> None:
    clock = FakeClock()
    throttle = FailureThrottle(3, window_s=60, clock=clock)
    for _ in range(3):
        assert throttle.blocked("1.2.3.4") is None
        throttle.failed("1.2.3.4")
        clock.advance(1)
    assert throttle.blocked("1.2.3.4") == pytest.approx(57)
    assert throttle.blocked("5.6.7.8") is None
    clock.advance(58)
    assert throttle.blocked("1.2.3.4") is None
    assert FailureThrottle(0).blocked("x") is None  # 0: off


@pytest.fixture
def limited() -> Iterator[Server]:
    settings = Settings(sync_timeout=0, max_queued_per_key=2, max_queued=5, rate_limit=120)
    yield from start_server(settings, worker=False)


def test_a_key_past_its_queued_cap_gets_the_wire_rate_limit_answer(limited: Server) -> None:
    for _ in range(2):
        assert limited.post("/api/v3/text2img", SMALL)["status"] == "processing"
    refused = limited.post("/api/v3/text2img", SMALL)
    assert refused["status"] == "error"
    assert refused["message"] == "Rate limit exceeded. Maximum 2 queued requests allowed."
    assert isinstance(refused["retry_after"], int) and 1 <= refused["retry_after"] <= 30
    assert limited.backends.queue.stats().queued == 2  # nothing was added
    other = limited.client.post("/api/v3/text2img", json={"key": limited.other_key, **SMALL})
    assert other.json()["status"] == "processing"


def test_a_full_queue_is_a_server_busy_answer(limited: Server) -> None:
    keys = [limited.backends.keys.create(f"k{i}")[1] for i in range(3)]
    answers = [
        limited.client.post("/api/v3/text2img", json={"key": key, **SMALL}).json()
        for key in keys
        for _ in range(2)
    ]
    assert [a["status"] for a in answers] == ["processing"] * 5 + ["error"]
    assert answers[-1]["message"] == "Server busy: the queue is full, try again later"
    assert answers[-1]["retry_after"] == 30


def test_a_keys_own_limits_win_over_the_servers(limited: Server) -> None:
    _, generous = limited.backends.keys.create("vip", KeyLimits(max_queued=4, rate_per_minute=2))
    statuses = [
        limited.client.post("/api/v3/text2img", json={"key": generous, **SMALL}).json()
        for _ in range(3)
    ]
    assert [a["status"] for a in statuses[:2]] == ["processing"] * 2
    # Its own rate (2 per minute) refuses the third before its own cap (4) would.
    assert statuses[2]["message"] == "Rate limit exceeded"
    assert "2 generation requests per minute" in statuses[2]["detail"]
    assert 25 <= statuses[2]["retry_after"] <= 31


def test_http_errors_mode_answers_429_with_retry_after() -> None:
    settings = Settings(sync_timeout=0, http_errors=True, max_queued_per_key=1)
    for srv in start_server(settings, worker=False):
        srv.client.post("/api/v3/text2img", json={"key": srv.key, **SMALL})
        refused = srv.client.post("/api/v3/text2img", json={"key": srv.key, **SMALL})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == str(refused.json()["retry_after"])


def test_an_address_guessing_keys_is_refused_for_a_while() -> None:
    settings = Settings(sync_timeout=0, max_key_failures=3)
    for srv in start_server(settings, worker=False):
        bad = [srv.client.post("/api/v3/system_load", json={"key": "guess"}).json()]
        bad += [srv.client.post("/api/v3/system_load", json={"key": "g2"}).json()]
        bad += [srv.client.post("/api/v3/system_load", json={}).json()]
        assert [b["message"] for b in bad] == ["Invalid Api Key"] * 3
        refused = srv.client.post("/api/v3/system_load", json={"key": srv.key}).json()
        assert refused["status"] == "error" and "too many invalid API keys" in refused["message"]
        assert refused["retry_after"] >= 1


def test_pixels_per_job_are_capped() -> None:
    at_default = {"prompt": "p", "width": 1024, "height": 1024, "samples": 4}
    assert read_generation(at_default, Settings(), Task.TEXT2IMG).samples == 4
    settings = Settings(sync_timeout=0, max_job_pixels=512 * 512)
    for srv in start_server(settings, worker=False):
        refused = srv.post("/api/v3/text2img", {"prompt": "p", "width": 512, "samples": 2})
        assert refused["status"] == "error"
        assert "at most 262144 pixels" in refused["message"]["samples"][0]
        assert srv.backends.queue.stats().queued == 0
