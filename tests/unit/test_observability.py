"""/metrics in the Prometheus text format, /ready, and the job id on every log line."""

from __future__ import annotations

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
