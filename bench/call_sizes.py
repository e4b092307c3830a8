"""How the time per image falls as a pipeline call makes more images at once, per image size.

The curve behind sdapi.batching's caps: a call of N images costs more than one of 1, but less
than N of them; once N more images barely lower the time per image, a larger call only makes
its first job wait longer. For each size and call size it prints the median seconds per call
and per image (the engine called in-process, no server), the gain per image against calls of
1, and the cap this suggests: the largest call size whose time per image is still at least
`--gain` (10 %) lower than the next smaller one's.

    .venv/bin/python bench/call_sizes.py [--sizes 64 128 256 512] [--calls 1 2 4 8]
        [--steps 20] [--repeat 3] [--device cpu] [--model sdapi-tiny]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sdapi.batching import call_cap
from sdapi.engine.engine import Engine
from sdapi.jobs import GenerationRequest, Task


def request(size: int, steps: int, seed: int, model: str) -> GenerationRequest:
    return GenerationRequest(
        Task.TEXT2IMG, model, f"a lighthouse, study {seed}", "", size, size, 1, steps, 7.5, seed
    )


def seconds_per_call(engine: Engine, size: int, steps: int, count: int, repeat: int) -> float:
    """Median seconds of `repeat` calls of `count` images (after one untimed call)."""
    requests = [request(size, steps, seed, engine.model) for seed in range(count)]
    engine.generate_batch(requests, [{}] * count)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        engine.generate_batch(requests, [{}] * count)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def suggested_cap(per_image: dict[int, float], gain: float) -> int:
    cap = 1
    sizes = sorted(per_image)
    for smaller, larger in itertools.pairwise(sizes):
        if per_image[larger] > per_image[smaller] * (1 - gain):
            break
        cap = larger
    return cap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gain", type=float, default=0.1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="sdapi-tiny")
    args = parser.parse_args()
    print(
        f"{args.model} on {args.device}, {args.steps} steps, torch threads "
        f"{torch.get_num_threads()}, median of {args.repeat}"
    )
    print(f"{'size':>5} {'call':>5} {'s/call':>8} {'s/image':>8} {'vs 1':>6}")
    with tempfile.TemporaryDirectory(prefix="sdapi-bench-") as models_dir:
        engine = Engine(args.model, Path(models_dir), args.device)
        engine.load()
        for size in args.sizes:
            per_image = {}
            for count in args.calls:
                seconds = seconds_per_call(engine, size, args.steps, count, args.repeat)
                per_image[count] = seconds / count
                ratio = per_image[count] / per_image[args.calls[0]]
                each = per_image[count]
                print(f"{size:>5} {count:>5} {seconds:>8.3f} {each:>8.3f} {ratio:>6.2f}")
            print(
                f"{size:>5} suggested cap {suggested_cap(per_image, args.gain)}"
                f" (sdapi's: {call_cap(args.device, size, size)})",
                flush=True,
            )


if __name__ == "__main__":
    main()
