"""Images per second: sdapi end to end against the best this hardware does, in one run.

Measurements of the same images (same model, prompts, seeds, size and steps):

a) the ceiling: the engine called directly in this process, in calls of the `rows` images
   sdapi uses for this size (`rows_for(device, size, size, 0)`); no HTTP, queue or storage;
   a1) the same in calls of one image, so that b/c can be read against what batching gains
   on this hardware at all (a/a1);
b) `sdapi serve` (own temp data dir, one worker, default batching, `--sync-timeout 0`):
   `--clients` threads submit the jobs over HTTP, then poll fetch until each one succeeds;
c) as b) with `--max-batch 1`: one image per pipeline call, as peer servers run.

Nothing timed includes a model load or a first pipeline call: a) and a1) make one call first,
and each server must answer one warm-up job of the same shape with success before its run
starts. The servers' images/s are read from their database: jobs / (first created_at -> last
finished_at). Every run uses the same torch threads: this process's default, passed to the
servers as `--threads`.

Also printed, from the b) server's database (`<data-dir>/sdapi.db`, tables jobs and rates):
- submit-to-start latency (started_at - created_at) of single jobs sent one at a time to the
  idle server;
- ETA error of run b): the `eta` each submit answered against its actual wait
  (finished_at - created_at), |pred - actual| / actual; with the server's learned seconds per
  work unit before and after the run, and the error those same ETAs would have had at the rate
  learned after it.

    .venv/bin/python bench/throughput.py [--jobs 16] [--clients 8] [--size 256] [--steps 20]
        [--device cpu] [--model sdapi-tiny]
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from sdapi.batching import rows_for
from sdapi.engine.engine import Engine
from sdapi.eta import PRIOR_SECONDS_PER_UNIT
from sdapi.jobs import GenerationRequest, Task

GUIDANCE = 7.5
FIRST_SEED = 1000
#: Index of the warm-up job's prompt and seed, apart from the measured jobs'.
WARM_UP = -1
#: Seconds between two fetches of one client: real clients poll slowly, and every fetch costs
#: the API process CPU that the worker on this machine would otherwise use.
POLL_S = 0.5
LATENCY_PROBES = 5
START_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class Config:
    jobs: int
    clients: int
    size: int
    steps: int
    device: str
    model: str
    threads: int

    @property
    def rows(self) -> int:
        return rows_for(self.device, self.size, self.size, 0)


@dataclass(frozen=True, slots=True)
class Submitted:
    id: int
    eta: float


@dataclass(frozen=True, slots=True)
class Timing:
    created_at: float
    started_at: float
    finished_at: float


def prompt(index: int) -> str:
    return f"a lighthouse at dawn, study {index}"


def job_body(cfg: Config, index: int) -> dict[str, Any]:
    return {
        "prompt": prompt(index),
        "width": str(cfg.size),
        "height": str(cfg.size),
        "samples": "1",
        "num_inference_steps": str(cfg.steps),
        "guidance_scale": GUIDANCE,
        "seed": FIRST_SEED + index,
    }


def engine_request(cfg: Config, index: int) -> GenerationRequest:
    """What the server makes of `job_body(cfg, index)`."""
    return GenerationRequest(
        Task.TEXT2IMG,
        cfg.model,
        prompt(index),
        "",
        cfg.size,
        cfg.size,
        1,
        cfg.steps,
        GUIDANCE,
        FIRST_SEED + index,
    )


def ceilings(cfg: Config, models_dir: Path) -> tuple[float, float]:
    """a): images/s of the engine alone in calls of `cfg.rows` images; a1): in calls of one."""
    engine = Engine(cfg.model, models_dir, cfg.device, cfg.threads)
    engine.load()
    requests = [engine_request(cfg, i) for i in range(cfg.jobs)]
    return engine_rate(engine, requests, cfg.rows), engine_rate(engine, requests, 1)


def engine_rate(engine: Engine, requests: Sequence[GenerationRequest], rows: int) -> float:
    engine.generate_batch(requests[:rows], [{}] * rows, rows)  # the first call: not timed
    started = time.perf_counter()
    engine.generate_batch(requests, [{}] * len(requests), rows)
    return len(requests) / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sdapi_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sdapi", *args]


@dataclass
class Server:
    data_dir: Path
    port: int
    key: str
    proc: subprocess.Popen[bytes]
    #: Id of the job that warmed the worker up (0 until it is submitted).
    warm_up_id: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = http.post(f"{self.url}{path}", json={"key": self.key, **body}, timeout=60)
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()
        if data.get("status") not in ("success", "processing"):
            raise RuntimeError(f"{path} answered {data}")
        return data

    def submit(self, http: httpx.Client, body: dict[str, Any]) -> Submitted:
        data = self.post(http, "/api/v3/text2img", body)
        return Submitted(int(data["id"]), float(data.get("eta") or 0.0))

    def wait_success(self, http: httpx.Client, job_id: int) -> None:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while self.post(http, f"/api/v3/fetch/{job_id}", {})["status"] != "success":
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish in {JOB_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        db = sqlite3.connect(f"file:{self.data_dir / 'sdapi.db'}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def timings(self, ids: Sequence[int]) -> dict[int, Timing]:
        marks = ",".join("?" * len(ids))
        rows = self.query(
            f"SELECT id, created_at, started_at, finished_at FROM jobs WHERE id IN ({marks})", ids
        )
        return {r["id"]: Timing(r["created_at"], r["started_at"], r["finished_at"]) for r in rows}

    def generation_seconds(self, job_id: int) -> float:
        rows = self.query("SELECT generation_seconds FROM jobs WHERE id = ?", (job_id,))
        return float(rows[0]["generation_seconds"])

    def rate(self) -> float | None:
        """The seconds per work unit the server has learned (None: it still uses its prior)."""
        rows = self.query("SELECT seconds_per_unit FROM rates")
        return float(rows[0]["seconds_per_unit"]) if rows else None


def create_key(data_dir: Path) -> str:
    done = subprocess.run(
        sdapi_command("keys", "create", "--data-dir", str(data_dir), "--name", "bench"),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"sdapi serve exited with {server.proc.returncode}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("sdapi serve did not become healthy")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the worker finishes its job and exits), SIGKILL to the group if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def serving(cfg: Config, *flags: str) -> Iterator[Server]:
    """A warm `sdapi serve` on a fresh data dir: its worker has answered one job already."""
    with tempfile.TemporaryDirectory(prefix="sdapi-bench-") as tmp:
        data_dir = Path(tmp)
        key = create_key(data_dir)
        port = free_port()
        args = ["--data-dir", str(data_dir), "--port", str(port), "--model", cfg.model]
        args += ["--device", cfg.device, "--threads", str(cfg.threads), "--workers", "1"]
        args += ["--sync-timeout", "0", *flags]
        with (data_dir / "server.log").open("ab") as log:
            proc = subprocess.Popen(
                sdapi_command("serve", *args),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, with its worker
            )
        server = Server(data_dir, port, key, proc)
        try:
            wait_healthy(server)
            with httpx.Client() as http:  # the worker loads the model during this job
                server.warm_up_id = server.submit(http, job_body(cfg, WARM_UP)).id
                server.wait_success(http, server.warm_up_id)
            yield server
        except BaseException:
            log_text = (data_dir / "server.log").read_text(errors="replace")
            print(f"--- server log (last lines) ---\n{log_text[-3000:]}", file=sys.stderr)
            raise
        finally:
            stop(proc)


def run_clients(server: Server, cfg: Config) -> list[Submitted]:
    """Each client submits its share of the jobs, then polls them until each succeeds."""

    def client(indices: range) -> list[Submitted]:
        with httpx.Client() as http:
            submitted = [server.submit(http, job_body(cfg, i)) for i in indices]
            for job in submitted:
                server.wait_success(http, job.id)
        return submitted

    shares = [range(c, cfg.jobs, cfg.clients) for c in range(cfg.clients)]
    with ThreadPoolExecutor(max_workers=cfg.clients) as pool:
        return [job for share in pool.map(client, shares) for job in share]


@dataclass(frozen=True, slots=True)
class ServedRun:
    images_per_s: float
    #: (eta the submit answered, actual finished_at - created_at) per job.
    etas: list[tuple[float, float]]
    #: The server's seconds per work unit before and after the run (None: its prior).
    rate_before: float | None
    rate_after: float | None


def served_run(server: Server, cfg: Config) -> ServedRun:
    """Images/s from the database: jobs / (first created_at -> last finished_at)."""
    rate_before = server.rate()
    submitted = run_clients(server, cfg)
    timings = server.timings([job.id for job in submitted])
    first = min(t.created_at for t in timings.values())
    last = max(t.finished_at for t in timings.values())
    etas = [
        (job.eta, timings[job.id].finished_at - timings[job.id].created_at) for job in submitted
    ]
    return ServedRun(len(submitted) / (last - first), etas, rate_before, server.rate())


def idle_latencies(server: Server, cfg: Config) -> list[float]:
    """started_at - created_at of single jobs, each sent once the previous one has succeeded."""
    ids = []
    with httpx.Client() as http:
        for probe in range(LATENCY_PROBES):
            job = server.submit(http, job_body(cfg, cfg.jobs + probe))
            server.wait_success(http, job.id)
            ids.append(job.id)
    return [t.started_at - t.created_at for t in server.timings(ids).values()]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in 0..1."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def eta_errors(etas: Sequence[tuple[float, float]], scale: float = 1.0) -> str:
    """Median and p90 of |pred - actual| / actual, predictions multiplied by `scale`."""
    errors = [abs(pred * scale - actual) / actual for pred, actual in etas]
    return f"median {statistics.median(errors):.0%}, p90 {percentile(errors, 0.9):.0%}"


def row(label: str, images_per_s: float) -> None:
    print(f"{label:<36} {images_per_s:>8.2f}", flush=True)


def describe_rate(rate: float | None) -> str:
    return f"{PRIOR_SECONDS_PER_UNIT:.3f} (the prior)" if rate is None else f"{rate:.3f}"


def pace(cfg: Config, images_per_s: float) -> float:
    """Wall seconds per work unit at this throughput, comparable with the server's rate."""
    return 1 / (images_per_s * engine_request(cfg, 0).work_units)


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="width and height in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="sdapi-tiny")
    args = parser.parse_args()
    return Config(
        args.jobs,
        args.clients,
        args.size,
        args.steps,
        args.device,
        args.model,
        torch.get_num_threads(),
    )


def print_header(cfg: Config) -> None:
    print(
        f"{cfg.jobs} jobs, {cfg.clients} clients, {cfg.size}x{cfg.size} px, {cfg.steps} steps, "
        f"rows {cfg.rows}, device {cfg.device}, model {cfg.model}, torch threads {cfg.threads} "
        "(in-process, and --threads for the servers)"
    )
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    print(f"{'run':<36} {'images/s':>8}", flush=True)


def print_eta(cfg: Config, run: ServedRun, warm_up_s: float) -> None:
    ratio = statistics.median(pred / actual for pred, actual in run.etas)
    print(
        f"ETA error, run b ({len(run.etas)} jobs): {eta_errors(run.etas)}; "
        f"median predicted/actual {ratio:.2f}"
    )
    print(
        f"  server's seconds per work unit: {describe_rate(run.rate_before)} when run b was "
        f"submitted, {describe_rate(run.rate_after)} after it; run b's own pace "
        f"{pace(cfg, run.images_per_s):.3f}"
    )
    print(
        f"  learned before run b from the warm-up job alone: 1 image in a call of {cfg.rows}, "
        f"{warm_up_s:.2f} s (a cold server would use the prior, {PRIOR_SECONDS_PER_UNIT})"
    )
    if run.rate_before and run.rate_after:
        scale = run.rate_after / run.rate_before
        print(f"  the same ETAs at the rate learned after run b: {eta_errors(run.etas, scale)}")


def main() -> None:
    cfg = parse_args()
    print_header(cfg)
    with tempfile.TemporaryDirectory(prefix="sdapi-bench-") as tmp:
        rate_a, rate_a1 = ceilings(cfg, Path(tmp) / "models")
    row(f"a) engine in-process (rows {cfg.rows})", rate_a)
    row("a1) engine in-process (rows 1)", rate_a1)

    with serving(cfg) as server:
        run_b = served_run(server, cfg)
        row(f"b) sdapi serve, batching (rows {cfg.rows})", run_b.images_per_s)
        warm_up_s = server.generation_seconds(server.warm_up_id)
        latencies = idle_latencies(server, cfg)
    with serving(cfg, "--max-batch", "1") as server:
        rate_c = served_run(server, cfg).images_per_s
    row("c) sdapi serve, --max-batch 1", rate_c)

    rate_b = run_b.images_per_s
    print(
        f"b/a {rate_b / rate_a:.2f}   b/c {rate_b / rate_c:.2f}   "
        f"(batching's gain in the engine alone, a/a1: {rate_a / rate_a1:.2f})"
    )
    print(
        f"submit-to-start latency, idle b server ({len(latencies)} jobs): "
        f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    print_eta(cfg, run_b, warm_up_s)


if __name__ == "__main__":
    main()
