"""`Engine`: one loaded model that turns a `GenerationRequest` into images.

The text2img pipeline is loaded once (diffusers picks the family's class: SD 1.x/2.x, SDXL or
SD3); img2img and inpaint are derived from it with `from_pipe` on first use, so all three share
one set of weights. Every call gets a fresh scheduler built from
the model's original scheduler config (schedulers are stateful, and a request's choice must not
leak into the next call) and one CPU generator per image, seeded from the request, so an image
depends only on its own seed: the same request gives the same bytes on any device, in any
process. Inpainting pastes the init image back outside the mask.

Per request, and undone before the next call: LoRAs with their weights and textual-inversion
embeddings from the models folder (sdapi.engine.adapter_loader), `clip_skip`, a VAE from the
models folder (sdapi.engine.vae_loader), token merging (sdapi.engine.token_merging). A request
may run on a pipeline variant (panorama, self-attention guidance: sdapi.engine.variants) and in
two passes (highres_fix, upscale: sdapi.engine.passes). After the call, the images of requests
that ask for it go through the safety checker (sdapi.engine.safety), and flagged ones are
replaced; `generate_batch_checked` also says which.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from PIL import Image

from sdapi.batching import Row, plan_calls
from sdapi.catalog.families import SD3, Family, check_size, family_of
from sdapi.engine import passes, speed, variants
from sdapi.engine.adapter_loader import Adapters
from sdapi.engine.models import load_pipeline
from sdapi.engine.options import effects_of
from sdapi.engine.safety import (
    SafetyChecker,
    check_safety_checker_type,
    checker_source,
    load_checker,
    replace_flagged,
)
from sdapi.engine.schedulers import make_scheduler
from sdapi.engine.signatures import accepts
from sdapi.engine.vae_loader import Vaes
from sdapi.jobs import GenerationRequest, Task

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, SchedulerMixin

#: on_step(step_done, total_steps) -> False to cancel.
StepCallback = Callable[[int, int], bool]
#: The warm-up call at load: one image this many pixels a side (twice for SD3's patches), so
#: small it costs little on any device, and three steps: with --compile, a step count equal to
#: the UNet's batch (2 with guidance) would let the compiled graph assume they are always equal
#: and compile again on the first real call.
WARM_UP_SIZE = 64
WARM_UP_STEPS = 3


class GenerationCancelled(Exception):
    """`on_step` returned False: the generation stopped early and made no images."""


class CheckedBatch(NamedTuple):
    """What `generate_batch_checked` returns, per request, per image."""

    images: list[list[Image.Image]]
    #: True where the safety checker flagged the image (and it was replaced); False where it
    #: passed or was not checked (the request did not ask): `nsfw_content_detected`.
    nsfw: list[list[bool]]


def weights_bytes(pipe: DiffusionPipeline) -> int:
    """Bytes of a loaded pipeline's weights and buffers, all components together."""
    total = 0
    for component in pipe.components.values():
        for tensor in [
            *getattr(component, "parameters", list)(),
            *getattr(component, "buffers", list)(),
        ]:
            total += tensor.numel() * tensor.element_size()
    return total


def release_device_memory(device: str) -> None:
    """Hand freed GPU memory back, so the next model loaded can use it (CPUs need nothing)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


class Engine:
    """One model on one device. Calls are serialised: the pipelines are shared, mutable state."""

    def __init__(
        self,
        model: str,
        models_dir: Path,
        device: str = "cpu",
        threads: int | None = None,
        safety_checker: str | None = None,
        compile: bool = False,
    ) -> None:
        #: The model reference as given (repo id, folder or `sdapi-tiny`).
        self.model = model
        self.models_dir = Path(models_dir)
        self.device = device
        self.threads = threads
        #: torch.compile the denoiser at load (sdapi.engine.speed), paid by the warm-up.
        self.compile = compile
        #: Which safety checker (sdapi.engine.safety.checker_source); None: the environment's
        #: SDAPI_SAFETY_CHECKER, then the models folder's, then the built-in for tiny models.
        self.safety_checker = safety_checker
        self._adapters = Adapters(self.models_dir)
        self.vaes = Vaes(self.models_dir)
        self._pipes: dict[Task, DiffusionPipeline] = {}
        #: Panorama and SAG pipelines, derived on first use like img2img and inpaint.
        self._variants: dict[str, DiffusionPipeline] = {}
        self._scheduler_config: dict[str, Any] = {}
        self._default_scheduler: type[SchedulerMixin] | None = None
        #: Schedulers as built for each setting, copied for every call (`_fresh_scheduler`).
        self._schedulers: dict[tuple[Any, ...], SchedulerMixin] = {}
        #: "sd", "sdxl", "sd3" once loaded; None before, or for other kinds of pipeline.
        self.family: Family | None = None
        # Reentrant: generate() holds it while calling load().
        self._lock = threading.RLock()

    def load(self) -> None:
        """Load the text2img pipeline; does nothing when it is already loaded."""
        with self._lock:
            if Task.TEXT2IMG in self._pipes:
                return
            if self.threads is not None:
                import torch

                # Process-wide; it also fixes the float rounding, so outputs stay reproducible.
                torch.set_num_threads(self.threads)
            pipe = load_pipeline(self.model, self.models_dir, self.device)
            speed.tune(pipe, self.device)
            if self.compile:
                speed.compile_denoiser(pipe)
            # Kept before any request swaps the scheduler: every call starts from this.
            self._scheduler_config = dict(pipe.scheduler.config)
            self._default_scheduler = type(pipe.scheduler)
            self.family = family_of(pipe)
            self._warm_up(pipe)
            self._pipes[Task.TEXT2IMG] = pipe

    def _warm_up(self, pipe: DiffusionPipeline) -> None:
        """One small call before the first job: a pipeline's first call pays one-time costs
        (lazy set-up, allocations, and with --compile the compilation itself), which the first
        user would otherwise wait for."""
        size = WARM_UP_SIZE * (2 if self.family == SD3 else 1)
        pipe(
            prompt="warm-up",
            num_inference_steps=WARM_UP_STEPS,
            width=size,
            height=size,
            output_type="pil",
        )

    def memory_bytes(self) -> int:
        """Bytes of the loaded weights (img2img and inpaint share them: counted once)."""
        pipe = self._pipes.get(Task.TEXT2IMG)
        return 0 if pipe is None else weights_bytes(pipe)

    def unload(self) -> None:
        """Drop the pipelines so their memory can be reused (GPU memory is released too)."""
        with self._lock:
            self._pipes.clear()
            self._variants.clear()
            self._schedulers.clear()
            self._adapters.reset()
            self.vaes.reset()
            release_device_memory(self.device)

    def generate(
        self,
        request: GenerationRequest,
        images: Mapping[str, Image.Image] | None = None,
        on_step: StepCallback | None = None,
    ) -> list[Image.Image]:
        """`request.samples` RGB images in one call; `images` holds "init" and "mask"."""
        return self.generate_batch([request], [images or {}], None, on_step)[0]

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        images: Sequence[Mapping[str, Image.Image]],
        rows: int | None = None,
        on_step: StepCallback | None = None,
    ) -> list[list[Image.Image]]:
        """The images of compatible requests (one batch key): one pipeline call of them all,
        or, with `rows`, calls of exactly `rows` images, padded with copies (sdapi.batching).

        `images[i]` holds request i's "init" (img2img, inpaint) and "mask" images. Loads the
        model first if need be (ConfigurationError when it cannot). Raises
        GenerationCancelled when `on_step` returns False, ValueError for requests this model
        cannot run (a scheduler or option its family does not take, a size it cannot make, a
        missing input image, a task the model lacks, a LoRA or embedding that is missing or
        does not fit). Images the safety checker flags come back replaced;
        `generate_batch_checked` also says which.
        """
        return self.generate_batch_checked(requests, images, rows, on_step).images

    def generate_checked(
        self,
        request: GenerationRequest,
        images: Mapping[str, Image.Image] | None = None,
        on_step: StepCallback | None = None,
    ) -> tuple[list[Image.Image], list[bool]]:
        """`generate`, with the safety checker's verdict per image (see `CheckedBatch.nsfw`)."""
        result = self.generate_batch_checked([request], [images or {}], None, on_step)
        return result.images[0], result.nsfw[0]

    def generate_batch_checked(
        self,
        requests: Sequence[GenerationRequest],
        images: Sequence[Mapping[str, Image.Image]],
        rows: int | None = None,
        on_step: StepCallback | None = None,
    ) -> CheckedBatch:
        """`generate_batch`, with the safety checker's verdict per image.

        The batch's requests share their LoRAs, embeddings and clip_skip (the batch key says
        so); each request has its own safety checker settings.
        """
        first = requests[0]
        with self._lock:
            self.load()
            checker = self._checker(requests)  # a missing checker fails before any work
            pipe = self._prepare(first)

            def run(rows: Sequence[Row], progress: StepCallback | None) -> list[Image.Image]:
                return self._run_call(pipe, requests, images, rows, progress)

            outputs = run_calls(requests, rows, on_step, run)
            nsfw = _check_safety(checker, requests, outputs)
        return CheckedBatch(outputs, nsfw)

    def _run_call(
        self,
        pipe: DiffusionPipeline,
        requests: Sequence[GenerationRequest],
        images: Sequence[Mapping[str, Image.Image]],
        rows: Sequence[Row],
        on_step: StepCallback | None,
    ) -> list[Image.Image]:
        """One pipeline call (two with highres_fix or upscale): an RGB image per row."""
        first = requests[0]
        size = passes.first_pass_size(first, passes.native_size(pipe))
        two_pass = size != first.output_size  # highres_fix on a small size needs no second
        progress = on_step if on_step is None or not two_pass else _overall(on_step, 0, 2)
        inputs = _call_inputs(pipe, requests, images, rows, size)
        made = self._call(pipe, first, inputs, progress)
        if first.task is Task.INPAINT:
            made = [
                _keep_unmasked(image, init, mask)
                for image, init, mask in zip(
                    made, inputs["image"], inputs["mask_image"], strict=True
                )
            ]
        if two_pass:
            made = self._refine(requests, rows, made, on_step and _overall(on_step, 1, 2))
        return made

    def _refine(
        self,
        requests: Sequence[GenerationRequest],
        rows: Sequence[Row],
        made: list[Image.Image],
        on_step: StepCallback | None,
    ) -> list[Image.Image]:
        """The second pass: `made` enlarged to the output size and redrawn by img2img."""
        # One img2img request per row, with its own prompts; the batch's settings are shared.
        refines = [passes.refining(requests[row.job]) for row in rows]
        pipe = self._pipeline(refines[0])
        enlarged = [{"init": image} for image in made]
        refine = refines[0]
        size = (refine.width, refine.height)
        inputs = _call_inputs(pipe, refines, enlarged, _own_rows(rows), size)
        return self._call(pipe, refine, inputs, on_step)

    def _call(
        self,
        pipe: DiffusionPipeline,
        request: GenerationRequest,
        inputs: dict[str, Any],
        on_step: StepCallback | None,
    ) -> list[Image.Image]:
        """Run `pipe` once with `inputs`, the request's scheduler, its options' effects
        (sdapi.engine.options) and progress."""
        pipe.scheduler = self.scheduler_for(request)
        effects = effects_of(request)
        for effect in effects:
            inputs |= effect.inputs(self, pipe, request)
        if on_step is not None:
            inputs |= _progress_inputs(pipe, on_step, request.steps)
        with contextlib.ExitStack() as stack:
            for effect in effects:
                stack.enter_context(effect.around(self, pipe, request))
            speed.tiles_for(pipe, self.device, inputs.get("width", 0), inputs.get("height", 0))
            result = pipe(**inputs)
        return [image.convert("RGB") for image in result.images]

    def _prepare(self, request: GenerationRequest) -> DiffusionPipeline:
        """Check what the batch asks of this model, load what its options need, and set its
        LoRAs and embeddings: whatever cannot run fails here, before any work."""
        if problem := check_size(self.family, request.width, request.height):
            raise ValueError(f"model {self.model}: {problem}")
        self.scheduler_for(request)  # refuses a bad one
        effects = effects_of(request)
        for effect in effects:
            effect.check(self, request)
        pipe = self._pipeline(request)
        for effect in effects:
            effect.prepare(self, pipe, request)
        self._adapters.apply(
            self._pipes[Task.TEXT2IMG], self.family, request.loras, request.embeddings
        )
        return pipe

    def _checker(self, requests: Sequence[GenerationRequest]) -> SafetyChecker | None:
        """The safety checker when any request asks for it (loaded once per process)."""
        asking = [request for request in requests if request.safety_checker]
        if not asking:
            return None
        for request in asking:  # refused now rather than after the work
            if problem := check_safety_checker_type(request.safety_checker_type):
                raise ValueError(problem)
        source = checker_source(self.safety_checker, self.models_dir, self.model)
        return load_checker(source, self.device, self.models_dir / "hub")

    def scheduler_for(self, request: GenerationRequest) -> SchedulerMixin:
        """A new scheduler for one call; the batch's requests share these settings (batch key).

        Built from the config once per setting, then copied: a copy is a fresh scheduler (they
        keep state between steps) at a fifth of from_config's cost, paid on every call.
        """
        key = (request.scheduler, request.task, request.use_karras_sigmas, request.algorithm_type)
        if key not in self._schedulers:
            self._schedulers[key] = self._new_scheduler(request)
        return copy.deepcopy(self._schedulers[key])

    def _new_scheduler(self, request: GenerationRequest) -> SchedulerMixin:
        if request.scheduler is None and not _scheduler_options(request):
            assert self._default_scheduler is not None  # set by load()
            return self._default_scheduler.from_config(self._scheduler_config)
        return make_scheduler(
            request.scheduler,
            self._scheduler_config,
            family=self.family,
            task=request.task,
            use_karras_sigmas=request.use_karras_sigmas,
            algorithm_type=request.algorithm_type,
        )

    def _pipeline(self, request: GenerationRequest) -> DiffusionPipeline:
        """The pipeline for the request's task and variant, derived from the text2img one on
        first use.

        A super_resolution request runs as "SD upscale": img2img over its input enlarged (with
        Lanczos) to the output size. The server sends those jobs to its x4 upscaler instead
        (sdapi.engine.upscale); this serves callers that give one to a text-to-image model.
        """
        if variant := variants.variant_of(request):
            if variant not in self._variants:
                self._variants[variant] = variants.derive(self._pipes[Task.TEXT2IMG], variant)
            return self._variants[variant]
        task = request.task
        if task is Task.UPSCALE:
            task = Task.IMG2IMG
        if task not in self._pipes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForImage2Image if task is Task.IMG2IMG else AutoPipelineForInpainting
            try:
                pipe = auto.from_pipe(self._pipes[Task.TEXT2IMG])
            except ValueError as exc:  # the model family has no pipeline for this task
                raise ValueError(f"model {self.model} cannot run {task}: {exc}") from exc
            pipe.set_progress_bar_config(disable=True)  # from_pipe does not copy it
            self._pipes[task] = pipe
        return self._pipes[task]


def _check_safety(
    checker: SafetyChecker | None,
    requests: Sequence[GenerationRequest],
    outputs: list[list[Image.Image]],
) -> list[list[bool]]:
    """Run the checker on the images of the requests that ask; replace the flagged ones."""
    nsfw = [[False] * len(images) for images in outputs]
    asked = [job for job, request in enumerate(requests) if request.safety_checker]
    if checker is None or not asked:
        return nsfw
    verdicts = iter(checker.flags([image for job in asked for image in outputs[job]]))
    for job in asked:
        for index, image in enumerate(outputs[job]):
            if next(verdicts):
                outputs[job][index] = replace_flagged(image, requests[job].safety_checker_type)
                nsfw[job][index] = True
    return nsfw


def _scheduler_options(request: GenerationRequest) -> bool:
    return request.use_karras_sigmas or request.algorithm_type is not None


def _call_inputs(
    pipe: DiffusionPipeline,
    requests: Sequence[GenerationRequest],
    images: Sequence[Mapping[str, Image.Image]],
    rows: Sequence[Row],
    size: tuple[int, int],
) -> dict[str, Any]:
    """Pipeline arguments for one call at `size`: each row's own prompt, seed and input images."""
    import torch

    first = requests[0]
    inputs: dict[str, Any] = {
        # One prompt and one generator per image, instead of num_images_per_prompt: an image
        # depends on its own seed only. CPU generators give the same noise on every device.
        "prompt": [requests[row.job].prompt for row in rows],
        "negative_prompt": [requests[row.job].negative_prompt for row in rows],
        "generator": [torch.Generator("cpu").manual_seed(row.seed) for row in rows],
        "num_images_per_prompt": 1,
        "num_inference_steps": first.steps,
        "guidance_scale": first.guidance_scale,
        "output_type": "pil",
    }
    # Explicit wherever accepted: inpaint would otherwise default to the UNet's size (512 px).
    if accepts(pipe, "height"):
        inputs |= {"width": size[0], "height": size[1]}
    if first.task is Task.TEXT2IMG:
        return inputs
    inputs["image"] = [
        _fit(_input_image(images[row.job], "init", first.task).convert("RGB"), size) for row in rows
    ]
    if first.strength is not None:
        inputs["strength"] = first.strength
    if first.task is Task.INPAINT:
        inputs["mask_image"] = [  # white = repaint
            _fit(
                _input_image(images[row.job], "mask", first.task).convert("L"),
                size,
                Image.Resampling.BILINEAR,
            )
            for row in rows
        ]
    return inputs


def run_calls(
    requests: Sequence[GenerationRequest],
    rows: int | None,
    on_step: StepCallback | None,
    run: Callable[[Sequence[Row], StepCallback | None], list[Image.Image]],
) -> list[list[Image.Image]]:
    """Each request's images, made by `run` in the calls `plan_calls` plans: every call padded
    to exactly `rows` images when given, progress reported over all the calls."""
    calls = plan_calls(requests, rows)
    outputs: list[list[Image.Image]] = [[] for _ in requests]
    for number, call in enumerate(calls):
        progress = None if on_step is None else _overall(on_step, number, len(calls))
        padded = [*call, *[call[0]] * ((rows or len(call)) - len(call))]
        for row, image in zip(call, run(padded, progress), strict=False):  # drops the padding
            outputs[row.job].append(image)
    return outputs


def _overall(on_step: StepCallback, number: int, calls: int) -> StepCallback:
    """Progress over all the calls of a batch, from one call's step callback."""

    def report(done: int, total: int) -> bool:
        return on_step(number * total + done, calls * total)

    return report


def _input_image(images: Mapping[str, Image.Image], name: str, task: Task) -> Image.Image:
    if name not in images:
        raise ValueError(f"{task} needs the {name!r} image")
    return images[name]


def _fit(
    image: Image.Image,
    size: tuple[int, int],
    resample: Image.Resampling = Image.Resampling.LANCZOS,
) -> Image.Image:
    return image if image.size == size else image.resize(size, resample)


def _keep_unmasked(image: Image.Image, init: Image.Image, mask: Image.Image) -> Image.Image:
    """Put the init image back where the mask is black, blending along a soft mask's edge.

    The pipeline returns a VAE round trip of the whole picture, which alters the unmasked area too
    (slightly with real models, completely with the tiny one); users expect it left untouched.
    """
    return Image.composite(image, init, mask)


def _own_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows of a second pass, whose request i is row i's (same seeds)."""
    return [replace(row, job=index) for index, row in enumerate(rows)]


def _progress_inputs(pipe: DiffusionPipeline, on_step: StepCallback, steps: int) -> dict[str, Any]:
    """The pipeline's step callback; SAG has only the old `callback(step, timestep, latents)`."""
    if accepts(pipe, "callback_on_step_end"):
        return {"callback_on_step_end": _step_callback(on_step)}

    def callback(step_index: int, timestep: Any, latents: Any) -> None:
        if on_step(step_index + 1, steps) is False:
            raise GenerationCancelled(f"cancelled after step {step_index + 1} of {steps}")

    return {"callback": callback, "callback_steps": 1}


def _step_callback(on_step: StepCallback) -> Callable[..., dict[str, Any]]:
    def callback(
        pipe: DiffusionPipeline, step_index: int, timestep: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        # num_timesteps counts the steps that really run: fewer for img2img/inpaint with
        # strength < 1, more for second-order schedulers (Heun, KDPM2).
        total = getattr(pipe, "num_timesteps", None) or step_index + 1
        if on_step(step_index + 1, total) is False:
            pipe._interrupt = True  # stops the denoising loop should anything swallow the raise
            # Raising here, not after the call, also skips the VAE decode of a result nobody wants.
            raise GenerationCancelled(f"cancelled after step {step_index + 1} of {total}")
        return tensors

    return callback
