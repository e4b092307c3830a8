"""What each generation option costs: seconds per image against the plain request, in one run.

For each option (panorama, self_attention, highres_fix, upscale 2, tomesd, a VAE from the
models folder), the engine makes the same images (model, prompt, seeds, steps) with and without
it, and prints seconds per image and the ratio to plain, beside the cost the server's ETA
assumes for it (sdapi.catalog.work.work_units). Rounds alternate the order (plain
first, then the option first) so a machine whose speed drifts slows both alike; every shape is
made once before timing, so no pipeline derivation or first call is counted.

Sizes: `--size` is the plain request's side. panorama runs at 2x the width (its point: wide
images), compared with a plain request of that size; highres_fix pretends the model's native
side is half of `--size` (the tiny model's real one, 512 px, is too slow on a CPU), so it draws
at half size and refines at full size.

    .venv/bin/python bench/options.py [--size 256] [--steps 10] [--rounds 3]
        [--model sdapi-tiny] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from sdapi.catalog.work import work_units
from sdapi.engine import passes
from sdapi.engine.engine import Engine
from sdapi.engine.tiny import _seeded, _vae
from sdapi.jobs import GenerationRequest, Task

VAE_NAME = "bench/other-vae"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="sdapi-tiny")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as models:
        engine = Engine(args.model, Path(models), device=args.device)
        engine.load()
        _seeded(lambda: _vae(scaling_factor=0.5)).save_pretrained(Path(models) / "vae" / VAE_NAME)
        native = args.size // 2
        real_native = passes.native_size
        passes.native_size = lambda pipe: native  # see the docstring: highres_fix
        try:
            rows = [_measure(engine, plain, option, args.rounds) for plain, option in _cases(args)]
        finally:
            passes.native_size = real_native
    print(f"{args.model} on {args.device}, {args.steps} steps, {args.rounds} rounds")
    header = ("option", "size", "plain s/img", "option s/img", "ratio", "ETA")
    print("{:<16}{:>10}{:>13}{:>14}{:>8}{:>7}".format(*header))
    for name, size, plain_s, option_s, assumed in rows:
        ratio = option_s / plain_s
        print(f"{name:<16}{size:>10}{plain_s:>13.3f}{option_s:>14.3f}{ratio:>8.2f}{assumed:>7.2f}")


def _cases(args: argparse.Namespace) -> list[tuple[GenerationRequest, GenerationRequest]]:
    base = GenerationRequest(
        task=Task.TEXT2IMG,
        model=args.model,
        prompt="a lighthouse on a cliff at dawn",
        negative_prompt="blurry",
        width=args.size,
        height=args.size,
        samples=1,
        steps=args.steps,
        guidance_scale=7.5,
        seed=7,
        scheduler="DDIMScheduler",  # self_attention needs a DDIM-like one: all cases share it
    )
    wide = replace(base, width=args.size * 2)
    return [
        (wide, replace(wide, panorama=True)),
        (base, replace(base, self_attention=True)),
        (base, replace(base, highres_fix=True)),
        (base, replace(base, upscale=2)),
        (base, replace(base, tomesd=True)),
        (base, replace(base, vae=VAE_NAME)),
    ]


def _measure(
    engine: Engine, plain: GenerationRequest, option: GenerationRequest, rounds: int
) -> tuple[str, str, float, float, float]:
    for request in (plain, option):
        engine.generate(request)  # warm: derive pipelines, load the VAE, first calls
    times: dict[str, list[float]] = {"plain": [], "option": []}
    for number in range(rounds):
        order = [("plain", plain), ("option", option)]
        for label, request in order if number % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            engine.generate(request)
            times[label].append(time.perf_counter() - start)
    name = _name(plain, option)
    assumed = work_units(option) / work_units(plain)
    size = f"{option.width}x{option.height}"
    plain_s, option_s = (statistics.median(times[label]) for label in ("plain", "option"))
    return name, size, plain_s, option_s, assumed


def _name(plain: GenerationRequest, option: GenerationRequest) -> str:
    for field in ("panorama", "self_attention", "highres_fix", "tomesd", "vae"):
        if getattr(option, field) != getattr(plain, field):
            return field
    return f"upscale {option.upscale}"


if __name__ == "__main__":
    main()
