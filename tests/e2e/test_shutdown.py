"""Graceful shutdown of a real `sdapi serve`: SIGTERM drains (calls in their sync window answer
`processing`, the worker finishes or hands back its batch), a second signal stops at once, and
after a restart every job ends as it should."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import Server, create_key, free_port

pytestmark = pytest.mark.e2e

LONG = {"prompt": "long", "width": 512, "height": 512, "num_inference_steps": 40}
SMALL = {"prompt": "small", "width": 64, "height": 64, "num_inference_steps": 2}


def row(data_dir: Path, job_id: int) -> tuple[str, int]:
    with sqlite3.connect(data_dir / "sdapi.db") as db:
        status, attempts = db.execute(
            "SELECT status, attempts FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    return status, attempts


def start(data_dir: Path, *args: str) -> tuple[Server, str]:
    key_file = data_dir / "key.txt"
    if not key_file.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(create_key(data_dir))
    server = Server(data_dir, free_port(), ("--sync-timeout", "60", *args)).start()
    return server, key_file.read_text()


def running(server: Server, key: str, body: dict[str, Any]) -> int:
    """Submit and wait until the worker is generating it."""
    job_id: int = server.post(key, "/api/v3/text2img", {**body, "instant_response": True})["id"]
    while server.post(key, f"/api/v3/fetch/{job_id}").get("progress", 0) == 0:
        time.sleep(0.05)
    return job_id


def test_sigterm_drains_in_seconds_and_loses_nothing(tmp_path: Path) -> None:
    server, key = start(tmp_path, "--drain-timeout", "2")
    long_id = running(server, key, LONG)
    queued_id = server.post(key, "/api/v3/text2img", {**SMALL, "instant_response": True})["id"]
    waiting: list[dict[str, Any]] = []  # a call inside its 60 s sync window when the signal comes
    caller = threading.Thread(
        target=lambda: waiting.append(server.post(key, "/api/v3/text2img", SMALL))
    )
    caller.start()
    time.sleep(0.5)
    asked = time.monotonic()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    stopped_in = time.monotonic() - asked
    caller.join(timeout=5)
    print(f"serve exited {stopped_in:.1f} s after SIGTERM")
    assert stopped_in < 12, server.log()
    assert waiting and waiting[0]["status"] == "processing"  # answered, not dropped
    # The running batch was handed back: queued again, its attempt not counted.
    assert row(tmp_path, long_id) == ("queued", 0)
    assert row(tmp_path, queued_id)[0] == "queued"
    assert "handed back to the queue" in server.log()

    again, _ = start(tmp_path, "--drain-timeout", "2")
    try:
        for job_id in (long_id, queued_id, waiting[0]["id"]):
            assert again.wait_done(key, job_id)["status"] == "success"
    finally:
        again.stop()


def test_a_second_signal_stops_at_once_and_leases_bring_the_work_back(tmp_path: Path) -> None:
    server, key = start(tmp_path, "--drain-timeout", "60", "--lease-seconds", "2")
    job_id = running(server, key, LONG)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    asked = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=10)
    assert time.monotonic() - asked < 5, server.log()
    assert row(tmp_path, job_id)[0] == "processing"  # left to its lease
    again, _ = start(tmp_path, "--lease-seconds", "2")
    try:
        assert again.wait_done(key, job_id)["status"] == "success"
    finally:
        again.stop()
