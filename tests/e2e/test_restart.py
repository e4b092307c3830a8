"""Durability of the embedded default: a job running when `sdapi serve` is SIGKILLed is finished
after a restart. (Queued jobs and standalone workers: test_crash_safety.py.)"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server, create_key, free_port

pytestmark = pytest.mark.e2e


def test_a_job_running_when_the_server_dies_is_finished_after_restart(
    model_folder: Path, tmp_path: Path
) -> None:
    model = model_folder
    data = tmp_path / "data"
    key = create_key(data)
    args = ("--model", str(model), "--sync-timeout", "0", "--lease-seconds", "2")
    server = Server(data, free_port(), args).start()
    job_id = server.post(
        key,
        "/api/v3/text2img",
        {"prompt": "slow", "width": 512, "height": 512, "num_inference_steps": 20},
    )["id"]
    deadline = time.monotonic() + 90
    while server.post(key, f"/api/v3/fetch/{job_id}").get("progress", 0) == 0:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    server.kill()  # mid-generation: the job is `processing` with a lease nobody renews
    restarted = Server(data, free_port(), args).start()
    try:
        done = restarted.wait_done(key, job_id)
        assert done["status"] == "success", done
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
