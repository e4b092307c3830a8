"""Crash safety with one API process and three standalone workers.

Two deployments: the embedded one (SQLite file, local image directory) and the scale-out one
(PostgreSQL, an S3-compatible bucket served by moto on loopback). Workers are killed with SIGKILL
in the middle of a generation, twice; the API is killed with jobs queued. Every job must still
end `success` exactly once, its images written exactly once, no file left orphaned, and the
survivors must take the work over once its lease expires.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.db import query
from tests.e2e.server import Server, WorkerProcess, create_key, free_port
from tests.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, client, create_bucket
from tests.s3_server import moto_server as start_moto

pytestmark = pytest.mark.e2e

LEASE_S = 2.0
JOBS = 8
KILLS = 2


@dataclass
class Deployment:
    database_url: str
    #: The storage flags every process of the deployment shares.
    storage_args: tuple[str, ...]
    #: Names of the files under generations/ in the store, however it keeps them.
    list_outputs: Callable[[], set[str]]


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with start_moto() as endpoint:
        yield endpoint


@pytest.fixture(params=["sqlite+local", "postgres+s3"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Deployment:
    if request.param == "sqlite+local":
        images = tmp_path / "images"
        return Deployment(
            f"sqlite:///{tmp_path / 'shared.db'}",
            ("--storage", str(images)),
            lambda: {p.name for p in (images / "generations").iterdir()},
        )
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = create_bucket(endpoint)

    def list_outputs() -> set[str]:
        listed = client(endpoint).list_objects_v2(Bucket=bucket, Prefix="prod/generations/")
        return {item["Key"].rsplit("/", 1)[1] for item in listed.get("Contents", [])}

    s3_args = (
        "--storage",
        f"s3://{bucket}/prod",
        "--s3-endpoint-url",
        endpoint,
        "--s3-region",
        REGION,
        "--s3-access-key-id",
        ACCESS_KEY_ID,
        "--s3-secret-access-key",
        SECRET_ACCESS_KEY,
    )
    return Deployment(request.getfixturevalue("postgres_url"), s3_args, list_outputs)


def kill_a_worker_mid_generation(url: str, workers: list[WorkerProcess]) -> tuple[list[int], float]:
    """SIGKILL the live worker of a batch whose denoising has begun; returns (the ids of its
    batch's jobs, kill time)."""
    by_pid = {w.pid: w for w in workers if w.alive()}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = query(
            url,
            "SELECT w.id, w.pid FROM jobs j JOIN workers w ON w.id = j.worker_id"
            " WHERE j.status = 'processing' AND j.progress > 0 AND j.progress < 0.8",
        )
        for worker_id, pid in rows:
            if pid in by_pid:
                os.kill(pid, signal.SIGKILL)
                by_pid[pid].proc.wait()  # type: ignore[union-attr]
                held = query(
                    url,
                    "SELECT id FROM jobs WHERE worker_id = ? AND status = 'processing'",
                    worker_id,
                )
                return [job_id for (job_id,) in held], time.time()
        time.sleep(0.05)
    raise AssertionError("no job was seen mid-generation")


def test_workers_killed_mid_generation_lose_nothing(
    deployment: Deployment, model_folder: Path, tmp_path: Path
) -> None:
    url = deployment.database_url
    # Every process of a deployment names the same model: jobs carry it, workers claim by it.
    shared = ("--database", url, *deployment.storage_args, "--model", str(model_folder))
    key = create_key(tmp_path / "api", "crash", "--database", url)
    api = Server(
        tmp_path / "api", free_port(), (*shared, "--workers", "0", "--sync-timeout", "0")
    ).start()
    worker_args = (
        *shared,
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
            api.post(
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
        kills = [kill_a_worker_mid_generation(url, workers) for _ in range(KILLS)]
        answers = [api.wait_done(key, job_id, timeout=240) for job_id in ids]
        image = httpx.get(answers[0]["output"][0])  # served by the API from the store
    finally:
        for worker in workers:
            worker.stop()
        api.stop()
    logs = "".join(w.log() for w in workers)

    assert [a["status"] for a in answers] == ["success"] * JOBS, logs
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    # Each job's images were stored exactly once and it succeeded exactly once.
    stored = Counter(int(m) for m in re.findall(r"job (\d+): stored 2 images", logs))
    succeeded = Counter(int(m) for m in re.findall(r"job (\d+): success", logs))
    assert stored == succeeded == Counter(ids)
    # Exactly the promised files exist: none missing, none orphaned, no temporary leftovers.
    promised = {Path(link).name for a in answers for link in a["output"]}
    assert deployment.list_outputs() == promised
    # The killed batches' jobs ran twice, the others once; survivors took them over after the
    # lease.
    attempts = dict(query(url, "SELECT id, attempts FROM jobs"))
    for batch, killed_at in kills:
        for job_id in batch:
            assert attempts[job_id] == 2
            restarted = query(url, "SELECT started_at FROM jobs WHERE id = ?", job_id)[0][0]
            pickup = restarted - killed_at
            print(f"job {job_id}: taken over {pickup:.1f} s after its worker was killed")
            assert LEASE_S * 0.5 <= pickup < LEASE_S + 30, logs
    assert sum(attempts.values()) == JOBS + sum(len(batch) for batch, _ in kills)


def test_api_killed_with_queued_jobs_loses_nothing(
    deployment: Deployment, model_folder: Path, tmp_path: Path
) -> None:
    url = deployment.database_url
    shared = (
        "--database",
        url,
        *deployment.storage_args,
        "--model",
        str(model_folder),
        "--sync-timeout",
        "0",
    )
    key = create_key(tmp_path / "api", "crash", "--database", url)
    api = Server(tmp_path / "api", free_port(), (*shared, "--workers", "0")).start()
    ids = [
        api.post(
            key,
            "/api/v3/text2img",
            {"prompt": f"p{i}", "width": 64, "height": 64, "num_inference_steps": 2},
        )["id"]
        for i in range(4)
    ]
    api.kill()
    restarted = Server(tmp_path / "api", free_port(), shared).start()  # with its own worker
    try:
        answers = [restarted.wait_done(key, job_id) for job_id in ids]
        assert [a["status"] for a in answers] == ["success"] * len(ids)
        assert httpx.get(answers[-1]["output"][0]).status_code == 200
    finally:
        restarted.stop()
    assert deployment.list_outputs() == {Path(a["output"][0]).name for a in answers}
