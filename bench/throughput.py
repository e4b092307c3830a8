"""Images per second: sdapi end to end against the best this hardware does, in one run.

Four ways of making the same images (same model, prompts, seeds, size and steps):

a) the ceiling: the engine called directly in this process, in calls of the `rows` images
   sdapi uses for this size (`rows_for(device, size, size, 0)`); no HTTP, queue or storage;
a1) the same in calls of one image: what batching gains on this hardware at all (a/a1), to
   read b/c against;
b) `sdapi serve` (own temp data dir, one worker, default batching, `--sync-timeout 0`):
   `--clients` threads submit the jobs over HTTP, then poll fetch until each one succeeds;
c) as b) with `--max-batch 1`: one image per pipeline call, as peer servers run.

The jobs are split into `--rounds` rounds; each round runs every way once, in the order
a b c a1 and then backwards, so that a machine whose speed drifts (a shared 2-core VM does, by
10-20 % over a minute) slows every way alike. Both servers stay up meanwhile; an idle one only
polls its database. Nothing timed includes a model load or a first pipeline call: the engine
makes one call of each shape first, and each server must answer one warm-up job of the same
shape with success before the first round. A server's round lasts from the first job's
created_at to the last one's finished_at in its database; images/s = images / time, summed
over the rounds. Every way uses the same torch threads: this process's default, passed to the
servers as `--threads`.

Also printed, from the servers' databases (`<data-dir>/sdapi.db`, tables jobs and rates):
- how much of b's and c's time their worker held a job (claim to success): the rest is the
  queue's own overhead; and the CPU the API process and this process's HTTP clients used
  meanwhile (share of one core), taken from the worker on this machine;
- submit-to-start latency (started_at - created_at) of single jobs sent one at a time to the
  idle b) server, after random pauses;
- ETA error of b): the `eta` each submit answered against the job's actual wait
  (finished_at - created_at), |pred - actual| / actual, and per round with the seconds per work
  unit the server had learned when the round was submitted.

    .venv/bin/python bench/throughput.py [--jobs 16] [--rounds 2] [--clients 8] [--size 256]
        [--steps 20] [--device cpu] [--model sdapi-tiny]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
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
#: Longest random pause before a latency probe.
IDLE_PAUSE_S = 0.3
START_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class Config:
    jobs: int
    rounds: int
    clients: int
    size: int
    steps: int
    device: str
    model: str
    threads: int

    @property
    def rows(self) -> int:
        return rows_for(self.device, self.size, self.size, 0)

    def round_jobs(self, number: int) -> range:
        return range(number, self.jobs, self.rounds)


@dataclass(frozen=True, slots=True)
class Measured:
    """One way's round: its images, how long they took, how long a worker held a job."""

    images: int
    seconds: float
    busy: float
    #: Served rounds: CPU seconds the API process and this process's clients used meanwhile.
    side_cpu: float = 0.0
    #: Served rounds: (eta answered at submit, actual wait) per job, and the server's learned
    #: seconds per work unit when they were submitted (None: its prior).
    etas: tuple[tuple[float, float], ...] = ()
    rate_at_submit: float | None = None


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


def warm_engine(cfg: Config, models_dir: Path) -> Engine:
    """The engine, loaded, after one untimed call of each shape the rounds use."""
    engine = Engine(cfg.model, models_dir, cfg.device, cfg.threads)
    engine.load()
    for rows in sorted({cfg.rows, 1}):
        requests = [engine_request(cfg, WARM_UP)] * rows
        engine.generate_batch(requests, [{}] * rows, rows)
    return engine


def engine_round(engine: Engine, cfg: Config, rows: int, indices: Sequence[int]) -> Measured:
    requests = [engine_request(cfg, i) for i in indices]
    started = time.perf_counter()
    engine.generate_batch(requests, [{}] * len(requests), rows)
    seconds = time.perf_counter() - started
    return Measured(len(requests), seconds, seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sdapi_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sdapi", *args]


@dataclass(frozen=True, slots=True)
class Submitted:
    id: int
    eta: float


@dataclass(frozen=True, slots=True)
class Timing:
    created_at: float
    started_at: float
    finished_at: float


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
        """Seconds per work unit the server's ETA uses for jobs like the warm-up one: learned
        for their batch key, else for their model and task (None: it still uses its prior)."""
        rows = self.query(
            "SELECT r.seconds_per_unit FROM jobs j JOIN rates r"
            " ON r.rate_key IN (j.batch_key, j.rate_key) WHERE j.id = ?"
            " ORDER BY r.rate_key = j.batch_key DESC",
            (self.warm_up_id,),
        )
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


def run_clients(server: Server, cfg: Config, indices: Sequence[int]) -> list[Submitted]:
    """Each client submits its share of the jobs, then polls them until each succeeds."""

    def client(share: Sequence[int]) -> list[Submitted]:
        with httpx.Client() as http:
            submitted = [server.submit(http, job_body(cfg, i)) for i in share]
            for job in submitted:
                server.wait_success(http, job.id)
        return submitted

    shares = [indices[c :: cfg.clients] for c in range(cfg.clients)]
    with ThreadPoolExecutor(max_workers=cfg.clients) as pool:
        return [job for jobs in pool.map(client, shares) for job in jobs]


def served_round(server: Server, cfg: Config, indices: Sequence[int]) -> Measured:
    rate = server.rate()
    cpu = cpu_seconds(server.proc.pid) + time.process_time()
    submitted = run_clients(server, cfg, indices)
    cpu = cpu_seconds(server.proc.pid) + time.process_time() - cpu
    timings = server.timings([job.id for job in submitted])
    first = min(t.created_at for t in timings.values())
    last = max(t.finished_at for t in timings.values())
    etas = tuple(
        (job.eta, timings[job.id].finished_at - timings[job.id].created_at) for job in submitted
    )
    busy = busy_seconds(timings.values())
    return Measured(len(submitted), last - first, busy, cpu, etas, rate)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, its children apart (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_seconds(timings: Iterable[Timing]) -> float:
    """How long at least one of the jobs was held by a worker (union of claim -> success)."""
    busy, end = 0.0, -math.inf
    for t in sorted(timings, key=lambda t: t.started_at):
        busy += max(t.finished_at - max(t.started_at, end), 0.0)
        end = max(end, t.finished_at)
    return busy


def idle_latencies(server: Server, cfg: Config) -> list[float]:
    """started_at - created_at of single jobs, each sent once the previous one has succeeded."""
    ids = []
    pauses = random.Random(0)
    with httpx.Client() as http:
        for probe in range(LATENCY_PROBES):
            time.sleep(pauses.uniform(0, IDLE_PAUSE_S))  # not in step with the worker's polls
            job = server.submit(http, job_body(cfg, cfg.jobs + probe))
            server.wait_success(http, job.id)
            ids.append(job.id)
    return [t.started_at - t.created_at for t in server.timings(ids).values()]


def run_rounds(
    cfg: Config, ways: dict[str, Callable[[Sequence[int]], Measured]]
) -> dict[str, list[Measured]]:
    """Every way once per round, in the given order and then backwards."""
    results: dict[str, list[Measured]] = {name: [] for name in ways}
    for number in range(cfg.rounds):
        order = list(ways) if number % 2 == 0 else list(reversed(ways))
        for name in order:
            results[name].append(ways[name](cfg.round_jobs(number)))
    return results


def images_per_second(rounds: Sequence[Measured]) -> float:
    return sum(m.images for m in rounds) / sum(m.seconds for m in rounds)


def share(rounds: Sequence[Measured], seconds: Callable[[Measured], float]) -> float:
    """`seconds` summed over the rounds, as a fraction of their time."""
    return sum(seconds(m) for m in rounds) / sum(m.seconds for m in rounds)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in 0..1."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def eta_errors(etas: Sequence[tuple[float, float]]) -> str:
    errors = [abs(pred - actual) / actual for pred, actual in etas]
    ratio = statistics.median(pred / actual for pred, actual in etas)
    return (
        f"median {statistics.median(errors):.0%}, p90 {percentile(errors, 0.9):.0%} "
        f"(median predicted/actual {ratio:.2f})"
    )


def describe_rate(rate: float | None) -> str:
    return f"{PRIOR_SECONDS_PER_UNIT:.3f} (the prior)" if rate is None else f"{rate:.3f}"


def pace(cfg: Config, images_per_s: float) -> float:
    """Wall seconds per work unit at this throughput, comparable with the server's rate."""
    return 1 / (images_per_s * engine_request(cfg, 0).work_units)


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16, help="images per way, over all rounds")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="width and height in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="sdapi-tiny")
    args = parser.parse_args()
    if not 1 <= args.rounds <= args.jobs:
        parser.error("--rounds must be between 1 and --jobs")
    return Config(
        args.jobs,
        args.rounds,
        args.clients,
        args.size,
        args.steps,
        args.device,
        args.model,
        torch.get_num_threads(),
    )


def print_header(cfg: Config) -> None:
    print(
        f"{cfg.jobs} jobs in {cfg.rounds} rounds, {cfg.clients} clients, {cfg.size}x{cfg.size} "
        f"px, {cfg.steps} steps, rows {cfg.rows}, device {cfg.device}, model {cfg.model}, "
        f"torch threads {cfg.threads} (in-process, and --threads for the servers)"
    )
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}", flush=True)


def print_table(cfg: Config, results: dict[str, list[Measured]]) -> None:
    labels = {
        "a": f"a) engine in-process (rows {cfg.rows})",
        "a1": "a1) engine in-process (rows 1)",
        "b": f"b) sdapi serve, batching (rows {cfg.rows})",
        "c": "c) sdapi serve, --max-batch 1",
    }
    print(f"{'way':<36} {'images/s':>8} {'worker busy':>12} {'API+clients CPU':>16}")
    for name, label in labels.items():
        rounds = results[name]
        line = f"{label:<36} {images_per_second(rounds):>8.2f}"
        if name in ("b", "c"):
            busy, side = share(rounds, lambda m: m.busy), share(rounds, lambda m: m.side_cpu)
            line += f" {busy:>12.1%} {side:>11.1%} core"
        print(line)
    rate = {name: images_per_second(rounds) for name, rounds in results.items()}
    print(
        f"b/a {rate['b'] / rate['a']:.2f}   b/c {rate['b'] / rate['c']:.2f}   "
        f"(batching's gain in the engine alone, a/a1: {rate['a'] / rate['a1']:.2f})"
    )


def print_eta(cfg: Config, rounds: Sequence[Measured], after: float | None, warm_s: float) -> None:
    etas = [eta for m in rounds for eta in m.etas]
    print(f"ETA error, b ({len(etas)} jobs): {eta_errors(etas)}")
    for number, m in enumerate(rounds, 1):
        print(
            f"  round {number}: {eta_errors(m.etas)}; seconds per work unit at submit "
            f"{describe_rate(m.rate_at_submit)}, the round's own pace "
            f"{pace(cfg, m.images / m.seconds):.3f}"
        )
    print(
        f"  round 1's rate was learned from the warm-up job alone (1 image in a call of "
        f"{cfg.rows}: {warm_s:.2f} s); a cold server would use the prior, "
        f"{PRIOR_SECONDS_PER_UNIT} s/unit; after the last round: {describe_rate(after)}"
    )


def main() -> None:
    cfg = parse_args()
    print_header(cfg)
    with ExitStack() as stack:
        models_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sdapi-bench-")))
        engine = warm_engine(cfg, models_dir)
        server_b = stack.enter_context(serving(cfg))
        server_c = stack.enter_context(serving(cfg, "--max-batch", "1"))
        results = run_rounds(
            cfg,
            {
                "a": partial(engine_round, engine, cfg, cfg.rows),
                "b": partial(served_round, server_b, cfg),
                "c": partial(served_round, server_c, cfg),
                "a1": partial(engine_round, engine, cfg, 1),
            },
        )
        rate_after = server_b.rate()
        warm_up_s = server_b.generation_seconds(server_b.warm_up_id)
        latencies = idle_latencies(server_b, cfg)
    print_table(cfg, results)
    print(
        f"submit-to-start latency, idle b server ({len(latencies)} jobs): "
        f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    print_eta(cfg, results["b"], rate_after, warm_up_s)


if __name__ == "__main__":
    main()
