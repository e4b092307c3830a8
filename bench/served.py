"""A real `sdapi serve` for the benchmarks: started on a fresh data dir, driven over HTTP.

The process itself is the end-to-end tests' (tests/e2e/server.py); this adds what the
benchmarks ask of it: generating with a key, waiting for a job, and the job times the server
recorded in its database.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.e2e

from tests.e2e.server import Server as Process
from tests.e2e.server import create_key, free_port

POLL_S = 0.25
JOB_TIMEOUT_S = 600.0  # a full-size model with --compile takes minutes to load and warm


@dataclass(frozen=True, slots=True)
class Timing:
    created_at: float
    started_at: float
    finished_at: float


@dataclass
class Server:
    process: Process
    key: str

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def data_dir(self) -> Path:
        return self.process.data_dir

    def post(self, http: httpx.Client, path: str, data: dict[str, Any]) -> dict[str, Any]:
        answer = http.post(f"{self.url}{path}", json={"key": self.key, **data}, timeout=600)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        if result.get("status") not in ("success", "processing"):
            raise RuntimeError(f"{path} answered {result}")
        return result

    def generate(self, http: httpx.Client, data: dict[str, Any]) -> dict[str, Any]:
        route = "/api/v3/img2img" if "init_image" in data else "/api/v3/text2img"
        return self.post(http, route, data)

    def wait_success(self, http: httpx.Client, job_id: int) -> None:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while self.post(http, f"/api/v3/fetch/{job_id}", {})["status"] != "success":
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish in {JOB_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)

    def timings(self, ids: Sequence[int]) -> dict[int, Timing]:
        db = sqlite3.connect(f"file:{self.data_dir / 'sdapi.db'}?mode=ro", uri=True)
        try:
            marks = ",".join("?" * len(ids))
            rows = db.execute(
                f"SELECT id, created_at, started_at, finished_at FROM jobs WHERE id IN ({marks})",
                list(ids),
            ).fetchall()
        finally:
            db.close()
        return {row[0]: Timing(*row[1:]) for row in rows}


@contextmanager
def serve(
    model: str, device: str, threads: int, *flags: str, warm: Sequence[dict[str, Any]] = ()
) -> Iterator[Server]:
    """`sdapi serve` (one worker) on a fresh data dir, after it answered the `warm` jobs."""
    with tempfile.TemporaryDirectory(prefix="sdapi-bench-") as tmp:
        data_dir = Path(tmp)
        args = ("--model", model, "--device", device, "--threads", str(threads))
        args += ("--workers", "1", "--sync-timeout", "120", *flags)
        process = Process(data_dir, free_port(), args)
        server = Server(process, create_key(data_dir, "bench"))
        try:
            process.start()
            with httpx.Client() as http:
                for job in warm:  # the first waits for the worker to load its model
                    answer = server.generate(http, job)
                    if answer["status"] != "success":
                        server.wait_success(http, int(answer["id"]))
            yield server
        except BaseException:
            print(f"--- server log (last lines) ---\n{process.log()[-3000:]}", file=sys.stderr)
            raise
        finally:
            process.stop()
