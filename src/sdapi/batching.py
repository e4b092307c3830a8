"""Dynamic batching, latency first: how many images one pipeline call may make, and which.

A job that finds no compatible company runs as a call of its own size: as fast as the bare
pipeline call any peer server makes. Compatible jobs (one batch key) that are waiting when a
worker starts a call share it, up to `call_cap` images: the size where, on the device, making
more images at once stops making each one much cheaper. A job is never split across calls, so
every image of a job was computed in a call of the same size, which its meta reports.

Why that size is reported: on real kernels an image's pixels depend on how many images were
computed with it (a matrix multiply picks another micro-kernel for another batch size), though
not on what the other images are or where it sits among them. A request that names a
`call_size` runs in calls of exactly that many images, padded with copies when fewer are
waiting, and so reproduces, bit for bit, any image that meta says was made in such a call.
Pure: no torch here; the worker and the engine share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sdapi.jobs import GenerationRequest, Task

#: Most images per call on a CPU, by image area. bench/call_sizes.py measured the built-in
#: model on 2 cores, 20 steps: per image, a call of 8 takes 0.26x the time of a call of 1 at
#: 64 px and 0.36x at 128 px; a call of 4 takes 0.67x at 256 px (8: 0.63x, too little more to
#: make the first job wait for); at 512 px a call of 4 takes 0.96x: no gain, so no sharing.
CPU_CAPS = ((128 * 128, 8), (256 * 256, 4))
#: On a GPU: larger for small images, down to 2 at 1024x1024 (to measure on the first card
#: lent: bench/gpu.sh prints the curve).
GPU_CAPS = ((512 * 512, 8), (768 * 768, 4), (1024 * 1024, 2))


def call_cap(device: str, width: int, height: int, max_batch: int = 0) -> int:
    """The most images one call makes when jobs share it: `max_batch` when set (>0), else by
    device and image area. A job with more samples still runs whole, in one call."""
    if max_batch > 0:
        return max_batch
    table = CPU_CAPS if device == "cpu" else GPU_CAPS
    area = width * height
    return next((cap for limit, cap in table if area <= limit), 1)


def cap_for(request: GenerationRequest, device: str, max_batch: int = 0) -> int:
    """The most images a call for `request`'s batch key makes."""
    if request.call_size is not None:
        return request.call_size
    if request.task is Task.UPSCALE:
        # An upscale's cost is its decode at 4x, which batching does not share.
        return 1
    return call_cap(device, request.width, request.height, max_batch)


@dataclass(frozen=True, slots=True)
class Row:
    """One image of one job: which job, which of its samples, and its seed."""

    job: int
    sample: int
    seed: int


def plan_calls(requests: Sequence[GenerationRequest], rows: int | None = None) -> list[list[Row]]:
    """The images of compatible requests as calls: one call of them all when `rows` is None
    (the worker's batches fit one call), else calls of at most `rows` images, which the engine
    pads to exactly `rows`.

    Jobs keep their order and an image keeps its own seed.
    """
    images = [
        Row(i, s, seed) for i, req in enumerate(requests) for s, seed in enumerate(req.seeds())
    ]
    size = rows or max(len(images), 1)
    return [images[start : start + size] for start in range(0, len(images), size)]
