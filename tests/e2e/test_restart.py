"""Durability: jobs survive a server killed with SIGKILL, queued or mid-generation."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server, create_key, free_port

pytestmark = pytest.mark.e2e


def post(server: Server, key: str, path: str, body: dict[str, object]) -> dict[str, object]:
    answer = httpx.post(f"{server.url}{path}", json={"key": key, **body}, timeout=60).json()
    assert isinstance(answer, dict)
    return answer


def wait_success(server: Server, key: str, job_id: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = post(server, key, f"/api/v3/fetch/{job_id}", {})
        if answer["status"] != "processing":
            assert answer["status"] == "success", (answer, server.log())
            return answer
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish:\n{server.log()}")


def test_queued_jobs_survive_a_killed_server(model_folder: Path, tmp_path: Path) -> None:
    model = model_folder
    data = tmp_path / "data"
    key = create_key(data)
    args = ("--model", str(model), "--sync-timeout", "0")
    api_only = Server(data, free_port(), (*args, "--workers", "0")).start()
    ids = [
        post(
            api_only,
            key,
            "/api/v3/text2img",
            {"prompt": f"p{i}", "width": 64, "height": 64, "num_inference_steps": 2},
        )["id"]
        for i in range(3)
    ]
    api_only.kill()
    server = Server(data, free_port(), args).start()
    try:
        for job_id in ids:
            done = wait_success(server, key, job_id)
            assert done["meta"]["model"] == str(model)
            assert httpx.get(done["output"][0]).status_code == 200
    finally:
        server.stop()


def test_a_job_running_when_the_server_dies_is_finished_after_restart(
    model_folder: Path, tmp_path: Path
) -> None:
    model = model_folder
    data = tmp_path / "data"
    key = create_key(data)
    args = ("--model", str(model), "--sync-timeout", "0", "--lease-seconds", "2")
    server = Server(data, free_port(), args).start()
    job_id = post(
        server,
        key,
        "/api/v3/text2img",
        {"prompt": "slow", "width": 512, "height": 512, "num_inference_steps": 20},
    )["id"]
    deadline = time.monotonic() + 90
    while post(server, key, f"/api/v3/fetch/{job_id}", {}).get("progress", 0) == 0:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    server.kill()  # mid-generation: the job is `processing` with a lease nobody renews
    restarted = Server(data, free_port(), args).start()
    try:
        done = wait_success(restarted, key, job_id)
        assert httpx.get(done["output"][0]).status_code == 200
    finally:
        restarted.stop()
    with sqlite3.connect(data / "sdapi.db") as db:
        status, attempts = db.execute(
            "SELECT status, attempts FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    assert (status, attempts) == ("success", 2)
    leftovers = [p.name for p in (data / "images" / "generations").iterdir()]
    assert leftovers == [Path(done["output"][0]).name]
