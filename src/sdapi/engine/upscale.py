"""`UpscaleEngine`: super resolution with diffusers' x4 upscaler (StableDiffusionUpscalePipeline).

The upscaler is prompt-conditioned: it denoises latents at the input's resolution beside the
input (noised by `noise_level`), and its VAE decodes them at 4x. Scale 4 is its own; scales 2
and 3 run it and resize the 4x image down with Lanczos (the answer's meta says so): a real
diffusion upscale at every scale, instead of a resize up from the input. An input whose sides are
not multiples of 4 comes out of the pipeline a few pixels short (it crops to the VAE's factor), so
the result is always resized to exactly the input's size times the scale.

The upscaler is one of the models a worker serves, beside its `--model`s: `--upscaler` names it
(`sdapi-tiny-upscaler`, built offline like the other tiny models, a diffusers folder, or
`stabilityai/stable-diffusion-x4-upscaler`). It fits the worker as an engine does: the same
`generate_batch_checked` and a per-step callback that can cancel. As with `Engine`, a CPU
generator per image makes the output depend on its seed only. `--upscaler` is checked without
loading anything by sdapi.catalog.models.check_upscaler_ref.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from sdapi.batching import Row
from sdapi.catalog.builtins import TINY_UPSCALER_ID
from sdapi.catalog.models import check_upscaler_ref
from sdapi.catalog.work import UPSCALE_NATIVE_SCALE
from sdapi.engine import quiet_libraries
from sdapi.engine.engine import (
    CheckedBatch,
    GenerationCancelled,
    StepCallback,
    release_device_memory,
    run_calls,
    weights_bytes,
)
from sdapi.engine.tiny import build_tiny_upscaler
from sdapi.errors import ConfigurationError
from sdapi.jobs import GenerationRequest, Task

if TYPE_CHECKING:
    from diffusers import StableDiffusionUpscalePipeline


#: The pipeline class an upscaler folder must declare in its model_index.json.
class UpscaleEngine:
    """One x4 upscaler on one device; calls are serialised (the pipeline is mutable state)."""

    def __init__(
        self, model: str, models_dir: Path, device: str = "cpu", threads: int | None = None
    ) -> None:
        self.model = model
        self.models_dir = Path(models_dir)
        self.device = device
        self.threads = threads
        self._pipe: StableDiffusionUpscalePipeline | None = None
        self._lock = threading.RLock()

    def load(self) -> None:
        """Load the upscaler (a built-in one is built first); nothing if it is loaded."""
        with self._lock:
            if self._pipe is not None:
                return
            quiet_libraries()
            import torch

            if self.threads is not None:
                torch.set_num_threads(self.threads)  # as Engine: fixed threads, same bytes
            # Half precision on GPUs, as Engine; the pipeline decodes in float32 where needed.
            self._pipe = self._load(
                torch.float16 if self.device.startswith("cuda") else torch.float32
            )

    def _load(self, dtype: Any) -> StableDiffusionUpscalePipeline:
        from diffusers import StableDiffusionUpscalePipeline

        source = check_upscaler_ref(self.model)
        if source == TINY_UPSCALER_ID:
            source = str(build_tiny_upscaler(self.models_dir / TINY_UPSCALER_ID))
        try:
            pipe = StableDiffusionUpscalePipeline.from_pretrained(
                source, dtype=dtype, cache_dir=self.models_dir / "hub"
            )
            pipe.to(self.device)
        except Exception as exc:  # one line for the job's error and the log, as models.py does
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ConfigurationError(f"cannot load upscaler {self.model!r}: {reason}") from exc
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def memory_bytes(self) -> int:
        return 0 if self._pipe is None else weights_bytes(self._pipe)

    def unload(self) -> None:
        with self._lock:
            self._pipe = None
            release_device_memory(self.device)

    def generate_batch_checked(
        self,
        requests: Sequence[GenerationRequest],
        images: Sequence[Mapping[str, Image.Image]],
        rows: int | None = None,
        on_step: StepCallback | None = None,
    ) -> CheckedBatch:
        """Each request's upscaled image, in one call or in calls of exactly `rows` images
        (padded), as Engine does. `images[i]["init"]` is request i's input. Nothing is
        safety-checked."""
        _check(requests, images)
        with self._lock:
            self.load()

            def run(rows: Sequence[Row], progress: StepCallback | None) -> list[Image.Image]:
                return self._run_call(requests, images, rows, progress)

            outputs = run_calls(requests, rows, on_step, run)
        return CheckedBatch(outputs, [[False] * len(made) for made in outputs])

    def upscale(self, request: GenerationRequest, image: Image.Image) -> Image.Image:
        """One request's image, alone in its call."""
        return self.generate_batch_checked([request], [{"init": image}]).images[0][0]

    def _run_call(
        self,
        requests: Sequence[GenerationRequest],
        images: Sequence[Mapping[str, Image.Image]],
        rows: Sequence[Row],
        on_step: StepCallback | None,
    ) -> list[Image.Image]:
        import torch

        first = requests[0]  # the batch key makes steps, guidance and noise level common
        assert self._pipe is not None
        inputs: dict[str, Any] = {
            "prompt": [requests[row.job].prompt for row in rows],
            "negative_prompt": [requests[row.job].negative_prompt for row in rows],
            "image": [images[row.job]["init"].convert("RGB") for row in rows],
            "generator": [torch.Generator("cpu").manual_seed(row.seed) for row in rows],
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance_scale,
            "noise_level": first.noise_level if first.noise_level is not None else 20,
            "output_type": "pil",
        }
        if on_step is not None:
            inputs |= {"callback": _step_callback(on_step, first.steps), "callback_steps": 1}
        made = self._pipe(**inputs).images
        size = (first.width, first.height)
        return [_exact(image.convert("RGB"), size) for image in made]


def _check(
    requests: Sequence[GenerationRequest], images: Sequence[Mapping[str, Image.Image]]
) -> None:
    """What the API already refuses, checked again: a job must never run half right."""
    for request, given in zip(requests, images, strict=True):
        if request.task is not Task.UPSCALE:
            raise ValueError(f"the upscaler runs super_resolution jobs, not {request.task}")
        if "init" not in given:
            raise ValueError("super_resolution needs the input image")
        scale = request.scale or UPSCALE_NATIVE_SCALE
        expected = (given["init"].width * scale, given["init"].height * scale)
        if expected != (request.width, request.height):
            raise ValueError(
                f"the input image is {given['init'].width}x{given['init'].height}; at scale "
                f"{scale} that is not the {request.width}x{request.height} the job asks for"
            )


def _exact(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The x4 image at the size asked: Lanczos down for scales 2 and 3 (and the few pixels an
    input whose sides are not multiples of 4 loses); a 4x image of the right size as it is."""
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def _step_callback(on_step: StepCallback, steps: int) -> Callable[[int, Any, Any], None]:
    """The pipeline's old-style callback (it has no callback_on_step_end): raising stops the
    loop before the VAE decode, the expensive part."""

    def callback(step: int, timestep: Any, latents: Any) -> None:
        if on_step(step + 1, steps) is False:
            raise GenerationCancelled(f"cancelled after step {step + 1} of {steps}")

    return callback
