"""Crash safety with one API process and three standalone workers, on SQLite and PostgreSQL.

Workers are killed with SIGKILL in the middle of a generation, twice; the API is killed with
jobs queued. Every job must still end `success` exactly once, its images written exactly once,
no file left orphaned, and the survivors must take the work over once its lease expires.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.e2e.db import query
from tests.e2e.server import Server, WorkerProcess, create_key, free_port

pytestmark = pytest.mark.e2e

LEASE_S = 2.0
JOBS = 8
KILLS = 2


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def post(server: Server, key: str, path: str, body: dict[str, object]) -> dict[str, object]:
    answer = httpx.post(f"{server.url}{path}", json={"key": key, **body}, timeout=60).json()
    assert isinstance(answer, dict)
    return answer


def kill_a_worker_mid_generation(url: str, workers: list[WorkerProcess]) -> tuple[int, float]:
    """SIGKILL the live worker of a job whose denoising has begun; returns (job id, kill time)."""
    by_pid = {w.pid: w for w in workers if w.alive()}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = query(
            url,
            "SELECT j.id, w.pid FROM jobs j JOIN workers w ON w.id = j.worker_id"
            " WHERE j.status = 'processing' AND j.progress > 0 AND j.progress < 0.8",
        )
        for job_id, pid in rows:
            if pid in by_pid:
                os.kill(pid, signal.SIGKILL)
                by_pid[pid].proc.wait()  # type: ignore[union-attr]
                return job_id, time.time()
        time.sleep(0.05)
    raise AssertionError("no job was seen mid-generation")


def test_workers_killed_mid_generation_lose_nothing(
    database_url: str, model_folder: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    # Every process of a deployment names the same model: jobs carry it, workers claim by it.
    shared = ("--database", database_url, "--storage", str(images), "--model", str(model_folder))
    key = create_key(tmp_path / "api", "crash", "--database", database_url)
    api = Server(
        tmp_path / "api", free_port(), (*shared, "--workers", "0", "--sync-timeout", "0")
    ).start()
    worker_args = (
        *shared,
        "--model",
        str(model_folder),
        "--lease-seconds",
        str(LEASE_S),
        "--threads",
        "1",
        "--max-attempts",
        "5",
    )
    workers = [
        WorkerProcess(
            tmp_path / f"worker{i}.log", ("--data-dir", str(tmp_path / f"w{i}"), *worker_args)
        ).start()
        for i in range(3)
    ]
    try:
        ids = [
            post(
                api,
                key,
                "/api/v3/text2img",
                {
                    "prompt": f"job {i}",
                    "width": 256,
                    "height": 256,
                    "samples": 2,
                    "num_inference_steps": 15,
                    "seed": i,
                },
            )["id"]
            for i in range(JOBS)
        ]
        kills = [kill_a_worker_mid_generation(database_url, workers) for _ in range(KILLS)]
        deadline = time.monotonic() + 240
        while query(database_url, "SELECT COUNT(*) FROM jobs WHERE status != 'success'")[0][0]:
            assert time.monotonic() < deadline, "jobs did not finish"
            time.sleep(0.2)
        answers = [post(api, key, f"/api/v3/fetch/{i}", {}) for i in ids]
    finally:
        for worker in workers:
            worker.stop()
        api.stop()
    logs = "".join(w.log() for w in workers)

    assert [a["status"] for a in answers] == ["success"] * JOBS
    # Each job's images were stored exactly once and it succeeded exactly once.
    stored = Counter(int(m) for m in re.findall(r"job (\d+): stored 2 images", logs))
    succeeded = Counter(int(m) for m in re.findall(r"job (\d+): success", logs))
    assert stored == succeeded == Counter(ids)
    # Exactly the promised files exist: none missing, none orphaned, no temporary leftovers.
    promised = {Path(url).name for a in answers for url in a["output"]}  # type: ignore[union-attr]
    assert {p.name for p in (images / "generations").iterdir()} == promised
    # The killed jobs ran twice, the others once; survivors took them over after the lease.
    attempts = dict(query(database_url, "SELECT id, attempts FROM jobs"))
    for job_id, killed_at in kills:
        assert attempts[job_id] == 2
        restarted = query(database_url, "SELECT started_at FROM jobs WHERE id = ?", job_id)[0][0]
        pickup = restarted - killed_at
        print(f"job {job_id}: taken over {pickup:.1f} s after its worker was killed")
        assert LEASE_S * 0.5 <= pickup < LEASE_S + 30, logs
    assert sum(attempts.values()) == JOBS + KILLS


def test_api_killed_with_queued_jobs_loses_nothing(
    database_url: str, model_folder: Path, tmp_path: Path
) -> None:
    shared = (
        "--database",
        database_url,
        "--storage",
        str(tmp_path / "images"),
        "--model",
        str(model_folder),
        "--sync-timeout",
        "0",
    )
    key = create_key(tmp_path / "api", "crash", "--database", database_url)
    api = Server(tmp_path / "api", free_port(), (*shared, "--workers", "0")).start()
    ids = [
        post(
            api,
            key,
            "/api/v3/text2img",
            {"prompt": f"p{i}", "width": 64, "height": 64, "num_inference_steps": 2},
        )["id"]
        for i in range(4)
    ]
    api.kill()
    restarted = Server(tmp_path / "api", free_port(), shared).start()
    try:
        deadline = time.monotonic() + 120
        pending = set(ids)
        while pending:
            assert time.monotonic() < deadline, restarted.log()
            for job_id in list(pending):
                answer = post(restarted, key, f"/api/v3/fetch/{job_id}", {})
                if answer["status"] != "processing":
                    assert answer["status"] == "success", answer
                    pending.discard(job_id)
            time.sleep(0.2)
    finally:
        restarted.stop()
