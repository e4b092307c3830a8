"""Serving speed as a user sees it, side by side in one run: a lone request against a bare
pipeline, batching under load, and how honest the first ETAs are.

1. Idle. One request at a time on an idle `sdapi serve` (one worker; its sync window answers
   with the image): submit to success over HTTP, against a bare diffusers `pipe()` call of the
   same request on the same model folder in this process, per size (`--idle-sizes`). The two
   alternate, probe by probe, so a machine whose speed drifts slows both alike. Also the
   submit-to-start latency the server recorded (started_at - created_at).
2. Load. `--clients` clients submit compatible jobs at `--load-size` px all at once
   (`instant_response`), then poll fetch: images/s of sdapi, of sdapi `--max-batch 1` (one
   image a call, as peer servers run) and of the engine called in-process in calls of the
   server's cap (the ceiling), from the servers' own created_at/finished_at. Rounds alternate.
3. ETA. On a fresh server that has run only `--load-size` px jobs: the first `eta` answered for
   shapes it never ran (256x256 x4 samples 30 steps; a 512x512 img2img) against the time the
   job really took (finished_at - created_at); then, after one job of a shape, the error of
   the next ones; and the errors of the ETAs the load rounds' queued jobs were given.

    .venv/bin/python bench/throughput.py [--idle-sizes 64 256] [--probes 5] [--load-size 64]
        [--clients 8] [--jobs 32] [--rounds 2] [--steps 20] [--device cpu] [--model sdapi-tiny]

Every way uses the same torch threads: this process's default, passed to the servers as
`--threads`. Nothing timed includes a model load: the bare pipeline makes one call first, and
each server answers a warm-up job of each shape before it is measured.
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from PIL import Image
from served import Server, serve

from sdapi.batching import call_cap
from sdapi.engine.engine import Engine
from sdapi.engine.models import resolve_model_source
from sdapi.jobs import GenerationRequest, Task

GUIDANCE = 7.5
FIRST_SEED = 1000
#: The shapes the ETA section asks for first: never run before on its server.
UNSEEN = (
    ("256x256 x4 samples, 30 steps", {"width": 256, "height": 256, "samples": 4, "steps": 30}),
    ("512x512 img2img, 20 steps", {"width": 512, "height": 512, "img2img": True}),
)
#: Jobs of the first unseen shape run after its first one, for the error once it is known.
AFTER_ONE = 4


@dataclass(frozen=True, slots=True)
class Config:
    idle_sizes: tuple[int, ...]
    probes: int
    load_size: int
    clients: int
    jobs: int
    rounds: int
    steps: int
    device: str
    model: str
    threads: int


def body(size: int, steps: int, index: int, **extra: Any) -> dict[str, Any]:
    return {
        "prompt": f"a lighthouse at dawn, study {index}",
        "width": size,
        "height": size,
        "samples": 1,
        "num_inference_steps": steps,
        "guidance_scale": GUIDANCE,
        "seed": FIRST_SEED + index,
        **extra,
    }


def serving(cfg: Config, *flags: str, warm: Sequence[dict[str, Any]] = ()) -> Any:
    return serve(cfg.model, cfg.device, cfg.threads, *flags, warm=warm)


def init_image(size: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (120, 90, 60)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# 1. Idle ------------------------------------------------------------------------------------


class BarePipeline:
    """diffusers' own pipeline on the model folder the server loads: what a user would call."""

    def __init__(self, cfg: Config, models_dir: Path) -> None:
        from diffusers import AutoPipelineForText2Image

        folder = resolve_model_source(cfg.model, models_dir)
        dtype = torch.float16 if cfg.device.startswith("cuda") else torch.float32
        self.pipe = AutoPipelineForText2Image.from_pretrained(folder, dtype=dtype).to(cfg.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.device = cfg.device

    def seconds(self, size: int, steps: int, index: int) -> float:
        started = time.perf_counter()
        self.pipe(
            prompt=body(size, steps, index)["prompt"],
            width=size,
            height=size,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            generator=torch.Generator("cpu").manual_seed(FIRST_SEED + index),
        )
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started


@dataclass
class Idle:
    size: int
    bare: list[float]
    served: list[float]
    to_start: list[float]


def idle_round(cfg: Config, bare: BarePipeline, server: Server, size: int) -> Idle:
    result = Idle(size, [], [], [])
    ids = []
    bare.seconds(size, cfg.steps, -1)  # its first call at this size, untimed
    with httpx.Client() as http:
        for probe in range(cfg.probes):
            ways = ["bare", "served"] if probe % 2 == 0 else ["served", "bare"]
            for way in ways:
                if way == "bare":
                    result.bare.append(bare.seconds(size, cfg.steps, probe))
                    continue
                time.sleep(0.3)  # the server idle again, as a lone user finds it
                started = time.perf_counter()
                answer = server.generate(http, body(size, cfg.steps, probe))
                result.served.append(time.perf_counter() - started)
                if answer["status"] != "success":
                    raise RuntimeError(f"the sync window answered {answer['status']}")
                ids.append(int(answer["id"]))
    timings = server.timings(ids)
    result.to_start = [t.started_at - t.created_at for t in timings.values()]
    return result


# 2. Load ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    images: int
    seconds: float
    #: (eta answered at submit, actual wait) per queued job.
    etas: tuple[tuple[float, float], ...] = ()


def engine_round(engine: Engine, cfg: Config, indices: Sequence[int]) -> Measured:
    """The ceiling: the engine in calls of the server's cap, no HTTP, queue or storage."""
    cap = call_cap(cfg.device, cfg.load_size, cfg.load_size)
    requests = [engine_request(cfg, i) for i in indices]
    started = time.perf_counter()
    for start in range(0, len(requests), cap):
        chunk = requests[start : start + cap]
        engine.generate_batch(chunk, [{}] * len(chunk))
    return Measured(len(requests), time.perf_counter() - started)


def engine_request(cfg: Config, index: int) -> GenerationRequest:
    size = cfg.load_size
    return GenerationRequest(
        Task.TEXT2IMG,
        cfg.model,
        body(size, cfg.steps, index)["prompt"],
        "",
        size,
        size,
        1,
        cfg.steps,
        GUIDANCE,
        FIRST_SEED + index,
    )


def served_round(server: Server, cfg: Config, indices: Sequence[int]) -> Measured:
    """Each client submits its share at once, then polls its jobs until each succeeds."""

    def client(share: Sequence[int]) -> list[tuple[int, float]]:
        with httpx.Client() as http:
            submitted = [
                server.generate(http, body(cfg.load_size, cfg.steps, i, instant_response=True))
                for i in share
            ]
            for answer in submitted:
                server.wait_success(http, int(answer["id"]))
        return [(int(a["id"]), float(a.get("eta") or 0.0)) for a in submitted]

    shares = [indices[c :: cfg.clients] for c in range(cfg.clients)]
    with ThreadPoolExecutor(max_workers=cfg.clients) as pool:
        submitted = [job for jobs in pool.map(client, shares) for job in jobs]
    timings = server.timings([job_id for job_id, _ in submitted])
    first = min(t.created_at for t in timings.values())
    last = max(t.finished_at for t in timings.values())
    etas = tuple(
        (eta, timings[job_id].finished_at - timings[job_id].created_at) for job_id, eta in submitted
    )
    return Measured(len(submitted), last - first, etas)


def run_rounds(
    cfg: Config, ways: dict[str, Callable[[Sequence[int]], Measured]]
) -> dict[str, list[Measured]]:
    """Every way once per round, in the given order and then backwards."""
    results: dict[str, list[Measured]] = {name: [] for name in ways}
    for number in range(cfg.rounds):
        order = list(ways) if number % 2 == 0 else list(reversed(ways))
        for name in order:
            results[name].append(ways[name](range(number, cfg.jobs, cfg.rounds)))
    return results


def images_per_second(rounds: Sequence[Measured]) -> float:
    return sum(m.images for m in rounds) / sum(m.seconds for m in rounds)


# 3. ETA -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Eta:
    label: str
    predicted: float
    actual: float

    @property
    def ratio(self) -> float:
        return self.predicted / self.actual

    @property
    def error(self) -> float:
        return abs(self.predicted - self.actual) / self.actual


def shape_body(cfg: Config, shape: dict[str, Any], index: int) -> dict[str, Any]:
    size = shape["width"]
    data = body(size, shape.get("steps", cfg.steps), index, instant_response=True)
    data["samples"] = shape.get("samples", 1)
    if shape.get("img2img"):
        data |= {"init_image": init_image(size), "strength": 0.7}
    return data


def timed_eta(server: Server, http: httpx.Client, label: str, data: dict[str, Any]) -> Eta:
    answer = server.generate(http, data)
    job_id = int(answer["id"])
    server.wait_success(http, job_id)
    t = server.timings([job_id])[job_id]
    return Eta(label, float(answer.get("eta") or 0.0), t.finished_at - t.created_at)


def eta_section(server: Server, cfg: Config) -> tuple[list[Eta], list[Eta]]:
    """(first ETAs of unseen shapes, ETAs of the first shape once one job of it ran)."""
    first, after = [], []
    with httpx.Client() as http:
        for number, (label, shape) in enumerate(UNSEEN):
            first.append(timed_eta(server, http, label, shape_body(cfg, shape, 100 + number)))
        label, shape = UNSEEN[0]
        for number in range(AFTER_ONE):
            time.sleep(0.3)
            after.append(timed_eta(server, http, label, shape_body(cfg, shape, 200 + number)))
    return first, after


# Output -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def print_idle(results: Sequence[Idle], cfg: Config) -> None:
    print(f"\n1. Idle: one request at a time, {cfg.steps} steps, median of {cfg.probes}")
    print(f"{'size':>5} {'bare pipe()':>12} {'sdapi HTTP':>11} {'speed':>6} {'to start':>9}")
    for r in results:
        bare, served = statistics.median(r.bare), statistics.median(r.served)
        start_ms = statistics.median(r.to_start) * 1000
        print(
            f"{r.size:>5} {bare:>10.3f} s {served:>9.3f} s {bare / served:>5.2f}x"
            f" {start_ms:>6.0f} ms"
        )


def print_load(results: dict[str, list[Measured]], cfg: Config) -> None:
    cap = call_cap(cfg.device, cfg.load_size, cfg.load_size)
    print(
        f"\n2. Load: {cfg.clients} clients, {cfg.jobs} jobs in {cfg.rounds} rounds,"
        f" {cfg.load_size}x{cfg.load_size} px, {cfg.steps} steps"
    )
    labels = {
        "engine": f"engine in-process, calls of {cap}",
        "batching": "sdapi serve (batching)",
        "single": "sdapi serve --max-batch 1",
    }
    rate = {name: images_per_second(rounds) for name, rounds in results.items()}
    for name, label in labels.items():
        print(f"  {label:<36} {rate[name]:>6.2f} images/s")
    print(
        f"  batching gain {rate['batching'] / rate['single']:.2f}x over --max-batch 1;"
        f" sdapi at {rate['batching'] / rate['engine']:.2f}x the engine's ceiling"
    )


def print_etas(first: Sequence[Eta], after: Sequence[Eta], load: Sequence[Measured]) -> None:
    print("\n3. ETA (predicted at submit / actual, submit to success)")
    for eta in first:
        print(
            f"  first ever {eta.label:<30} {eta.predicted:>6.1f} s / {eta.actual:>5.1f} s"
            f" = {eta.ratio:.2f}x"
        )
    errors = [e.error for e in after]
    print(
        f"  after one job of it, {len(after)} more: median error {statistics.median(errors):.0%}"
        f" (max {max(errors):.0%})"
    )
    queued = [Eta("", p, a) for m in load for p, a in m.etas]
    if queued:
        load_errors = [e.error for e in queued]
        print(
            f"  under load ({len(queued)} queued jobs): median error"
            f" {statistics.median(load_errors):.0%}, p90 {percentile(load_errors, 0.9):.0%}"
        )


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--load-size", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=32, help="images per way, over all rounds")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="sdapi-tiny")
    args = parser.parse_args()
    return Config(
        tuple(args.idle_sizes),
        args.probes,
        args.load_size,
        args.clients,
        args.jobs,
        args.rounds,
        args.steps,
        args.device,
        args.model,
        torch.get_num_threads(),
    )


def main() -> None:
    cfg = parse_args()
    print(
        f"{cfg.model} on {cfg.device}, torch threads {cfg.threads}, {os.cpu_count()} CPUs,"
        f" load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    warm_idle = [body(size, cfg.steps, -1) for size in cfg.idle_sizes]
    warm_load = [body(cfg.load_size, cfg.steps, -1)]
    with ExitStack() as stack:
        models_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sdapi-bench-")))
        server = stack.enter_context(serving(cfg, warm=[*warm_idle, *warm_load]))
        bare = BarePipeline(cfg, models_dir)
        idle = [idle_round(cfg, bare, server, size) for size in cfg.idle_sizes]
        print_idle(idle, cfg)
        del bare
        engine = Engine(cfg.model, models_dir, cfg.device, cfg.threads)
        engine.load()
        engine_round(engine, cfg, range(2))  # its first calls, untimed
        single = stack.enter_context(serving(cfg, "--max-batch", "1", warm=warm_load))
        load = run_rounds(
            cfg,
            {
                "engine": lambda ids: engine_round(engine, cfg, ids),
                "batching": lambda ids: served_round(server, cfg, ids),
                "single": lambda ids: served_round(single, cfg, ids),
            },
        )
        print_load(load, cfg)
        single.process.stop()
        fresh = stack.enter_context(serving(cfg, warm=[body(cfg.load_size, cfg.steps, -1)] * 6))
        first, after = eta_section(fresh, cfg)
        print_etas(first, after, load["batching"])


if __name__ == "__main__":
    main()
