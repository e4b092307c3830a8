"""How much batching changes an image's bytes: the same job alone, and in calls of 2, 4, 8.

An image depends on the size of the pipeline call it was computed in (a batch of another size
takes other kernels, so the floating-point sums round differently), never on the other images
of the call. For each size and call size this prints, over `--jobs` jobs, how many of the
pixels differ from the job made alone (a call of 1), the largest difference (0-255) and the
PSNR against it, and whether the same job in a call of that size run again (alone, padded,
as `call_size` asks) gives the batched bytes back exactly.

    .venv/bin/python bench/drift.py [--sizes 64 256] [--calls 2 4 8] [--jobs 4] [--steps 20]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sdapi.engine.engine import Engine
from sdapi.jobs import GenerationRequest, Task


def request(size: int, steps: int, seed: int) -> GenerationRequest:
    return GenerationRequest(
        Task.TEXT2IMG, "sdapi-tiny", f"a lighthouse, study {seed}", "", size, size, 1, steps,
        7.5, seed,
    )  # fmt: skip


def pixels(image: object) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--calls", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(f"sdapi-tiny on the CPU, {args.steps} steps, torch threads {torch.get_num_threads()}")
    print(
        f"{'size':>5} {'call':>5} {'pixels differing':>17} {'max diff':>9} {'PSNR':>8}"
        f" {'replay':>7}"
    )
    with tempfile.TemporaryDirectory(prefix="sdapi-bench-") as models_dir:
        engine = Engine("sdapi-tiny", Path(models_dir))
        for size in args.sizes:
            jobs = [request(size, args.steps, seed) for seed in range(args.jobs)]
            alone = [pixels(engine.generate(job)[0]) for job in jobs]
            for call in args.calls:
                differing, worst, ratios, replayed = 0.0, 0, [], True
                for index, job in enumerate(jobs):
                    company = [request(size, args.steps, 1000 + n) for n in range(call - 1)]
                    batched = engine.generate_batch([job, *company], [{}] * call)[0][0]
                    got = pixels(batched)
                    differing += float(np.mean(got != alone[index])) / len(jobs)
                    worst = max(worst, int(np.abs(got - alone[index]).max()))
                    ratios.append(psnr(got, alone[index]))
                    again = engine.generate_batch([replace(job, call_size=call)], [{}], call)[0][0]
                    replayed &= np.array_equal(pixels(again), got)
                print(
                    f"{size:>5} {call:>5} {differing:>16.3%} {worst:>9} {min(ratios):>6.1f} dB"
                    f" {'exact' if replayed else 'DIFFERS':>7}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
