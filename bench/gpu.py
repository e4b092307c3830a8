"""The GPU figures in one run: bare diffusers against sdapi, without and with torch.compile.

For each model (full-size SD 1.5 at 512 px and SDXL at 1024 px, random weights built offline
by bench/random_models.py; with --tiny the built-in tiny SD and SDXL models at 64 px, which is
how a CPU and CI run it end to end), side by side:

- bare diffusers (the model's pipeline in this process, fp16 on a GPU): steps per second over
  the whole call (prompt encoding and decode included) and seconds per image, at batch 1 and
  at the call sizes sdapi's worker uses for that size;
- sdapi serve with that model: a lone request's latency over HTTP (submit to success, the
  server idle), and images/s under `--clients` concurrent clients;

each without, then with, compilation (torch.compile of the denoiser for the bare pipeline,
`--compile` for the server). Run it through bench/gpu.sh.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from random_models import BUILDERS
from served import Server, serve

from sdapi.batching import call_cap
from sdapi.engine.models import load_pipeline
from sdapi.engine.speed import compile_denoiser, tune


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    #: A built-in tiny model, or a BUILDERS key to build at full size.
    source: str
    size: int


FULL = (Model("SD 1.5", "sd15", 512), Model("SDXL", "sdxl", 1024))
TINY = (Model("tiny SD", "sdapi-tiny", 64), Model("tiny SDXL", "sdapi-tiny-sdxl", 64))


def call_sizes(device: str, size: int) -> list[int]:
    """Batch 1 and the call sizes a worker uses at this size: powers of 2 up to its cap."""
    cap = call_cap(device, size, size)
    sizes = [1]
    while sizes[-1] * 2 <= cap:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != cap:
        sizes.append(cap)
    return sizes


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_figures(
    model: Model, path: str, args: argparse.Namespace, compiled: bool
) -> list[tuple[int, float, float]]:
    """(batch, it/s, s/image) of the bare pipeline, median of 3 calls after a warm-up."""
    device, steps = args.device, args.steps
    pipe = load_pipeline(path, args.workdir, device)
    tune(pipe, device)
    if compiled:
        compile_denoiser(pipe)
    rows = []
    for batch in call_sizes(device, model.size):
        kwargs = {
            "prompt": ["a lighthouse at dawn"] * batch,
            "width": model.size,
            "height": model.size,
            "num_inference_steps": steps,
        }
        pipe(**kwargs)  # warm-up (and, compiled, the compilation)
        times = []
        for _ in range(3):
            synchronize(device)
            started = time.perf_counter()
            pipe(**kwargs)
            synchronize(device)
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
        rows.append((batch, steps / seconds, seconds / batch))
    del pipe
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def body(model: Model, steps: int, index: int) -> dict[str, Any]:
    return {
        "prompt": f"a lighthouse at dawn, study {index}",
        "width": model.size,
        "height": model.size,
        "num_inference_steps": steps,
        "seed": index,
    }


def served_figures(
    model: Model, path: str, args: argparse.Namespace, compiled: bool
) -> tuple[float, float]:
    """(a lone request's median seconds, images/s under args.clients clients)."""
    flags = ["--compile"] if compiled else []
    warm = [body(model, args.steps, -1)]
    with serve(path, args.device, torch.get_num_threads(), *flags, warm=warm) as server:
        lone = []
        with httpx.Client() as http:
            for probe in range(args.probes):
                time.sleep(0.3)
                started = time.perf_counter()
                server.generate(http, body(model, args.steps, probe))
                lone.append(time.perf_counter() - started)
        return statistics.median(lone), concurrent_rate(server, model, args)


def concurrent_rate(server: Server, model: Model, args: argparse.Namespace) -> float:
    def client(indices: range) -> list[int]:
        with httpx.Client() as http:
            return [int(server.generate(http, body(model, args.steps, i))["id"]) for i in indices]

    shares = [range(100 + c, 100 + args.jobs, args.clients) for c in range(args.clients)]
    with ThreadPoolExecutor(max_workers=args.clients) as pool:
        ids = [job for jobs in pool.map(client, shares) for job in jobs]
    timings = server.timings(ids).values()
    seconds = max(t.finished_at for t in timings) - min(t.created_at for t in timings)
    return len(ids) / seconds


def model_path(model: Model, workdir: Path) -> str:
    if model.source not in BUILDERS:
        return model.source
    dest = workdir / model.source
    if not (dest / "model_index.json").exists():
        started = time.perf_counter()
        BUILDERS[model.source](dest)
        print(f"built {model.name} with random weights in {time.perf_counter() - started:.0f} s")
    return str(dest)


def report(model: Model, args: argparse.Namespace, workdir: Path) -> None:
    path = model_path(model, workdir)
    print(f"\n{model.name}, {model.size}x{model.size}, {args.steps} steps, on {args.device}")
    modes = [False] if args.no_compile else [False, True]
    for compiled in modes:
        label = "compiled" if compiled else "eager"
        for batch, its, per_image in bare_figures(model, path, args, compiled):
            print(
                f"  bare diffusers, {label}, batch {batch}: {its:.2f} it/s (whole call),"
                f" {per_image:.3f} s/image"
            )
        lone, rate = served_figures(model, path, args, compiled)
        print(
            f"  sdapi serve{' --compile' if compiled else ''}: lone request {lone:.3f} s,"
            f" {args.clients} clients {rate:.2f} images/s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny models, 64 px")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--probes", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled runs")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sdapi-gpu")
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({name}), torch {torch.__version__}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    for model in TINY if args.tiny else FULL:
        report(model, args, args.workdir)


if __name__ == "__main__":
    main()
