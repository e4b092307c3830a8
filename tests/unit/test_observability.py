"""/metrics in the Prometheus text format, /ready, and the job id on every log line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from sdapi import logs
from sdapi.settings import Settings
from tests.unit.test_api_v3 import start_server

SMALL = {"prompt": "p", "width": 64, "height": 64}


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_count_jobs_generation_time_batches_and_http() -> None:
    for srv in start_server(Settings(sync_timeout=10), worker=True):
        assert srv.post("/api/v3/text2img", SMALL)["status"] == "success"
        srv.post("/api/v3/fetch/999")
        page = srv.client.get("/metrics")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/plain; version=0.0.4")
        got = _samples(page.text)
        assert got['sdapi_jobs_finished_total{status="success"}'] == 1
        assert got['sdapi_generation_seconds_count{model="sdapi-tiny",size="64x64"}'] == 1
        assert got["sdapi_batch_images_count"] == 1
        assert got['sdapi_queue_jobs{state="queued"}'] == 0
        assert got["sdapi_workers_live"] == 1
        fetch = 'route="/api/v3/fetch/{job_id}",method="POST",status="200"'
        assert got[f"sdapi_http_request_seconds_count{{{fetch}}}"] == 1
        assert "# TYPE sdapi_generation_seconds histogram" in page.text


def test_ready_needs_a_live_worker_and_a_short_queue() -> None:
    for srv in start_server(Settings(sync_timeout=0, ready_max_queued=1), worker=False):
        answer = srv.client.get("/ready")
        assert answer.status_code == 503 and answer.json()["reasons"] == ["no worker is alive"]
    for srv in start_server(Settings(sync_timeout=10, ready_max_queued=1), worker=True):
        assert srv.client.get("/ready").json() == {"status": "ready", "workers": 1, "queued": 0}


@pytest.fixture
def root_logging() -> Iterator[None]:
    """logs.configure replaces the root handlers (pytest's own among them): put them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_log_lines_name_their_jobs_in_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("sdapi.test")
    logs.configure("info", "json")
    with logs.job_context([12]):
        log.info("stored %d images", 2)
        thread = logs.in_context(lambda: log.warning("beat missed"), "t")
        thread.start()
        thread.join()
    with logs.job_context([3, 4]):
        log.info("batch")
    log.info("no job")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line.get("job_id"), line.get("job_ids")) for line in lines] == [
        (12, None), (12, None), (None, [3, 4]), (None, None)
    ]  # fmt: skip
    assert lines[0]["message"] == "stored 2 images" and lines[0]["level"] == "info"
    logs.configure("info", "text")
    with logs.job_context([7]):
        log.info("hello")
    assert " sdapi.test job=7: hello" in capsys.readouterr().err
