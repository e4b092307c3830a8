"""Shared test helpers: a controllable clock, requests and fakes."""

from __future__ import annotations

from typing import Any

from sdapi.jobs import GenerationRequest, Task


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_request(**changes: object) -> GenerationRequest:
    values: dict[str, object] = dict(
        task=Task.TEXT2IMG,
        model="sdapi-tiny",
        prompt="a lighthouse",
        negative_prompt="",
        width=64,
        height=64,
        samples=1,
        steps=2,
        guidance_scale=7.5,
        seed=42,
    )
    values.update(changes)
    return GenerationRequest(**values)  # type: ignore[arg-type]


class FakeEngine:
    """Stands in for the diffusers engine: a flat image of the output's size whose colour comes
    from the seed; for a super_resolution job, its input resized to the job's size."""

    model = "sdapi-tiny"

    def __init__(self, fail_with: str | None = None, model: str | None = None) -> None:
        self.fail_with = fail_with
        if model is not None:
            self.model = model
        self.calls: list[list[GenerationRequest]] = []
        #: The `rows` of each call: None for a call of its own size, N for calls padded to N.
        self.rows: list[int | None] = []

    def load(self) -> None:
        self.loads = getattr(self, "loads", 0) + 1

    def memory_bytes(self) -> int:
        return 100

    def unload(self) -> None:
        self.unloads = getattr(self, "unloads", 0) + 1

    def generate_batch_checked(self, requests, images, rows=None, on_step=None):  # type: ignore[no-untyped-def]
        """As the engine's: nothing is checked here, so nothing is flagged."""
        outputs = self.generate_batch(requests, images, rows, on_step)
        return outputs, [[False] * len(images_of) for images_of in outputs]

    def generate_batch(self, requests, images, rows=None, on_step=None):  # type: ignore[no-untyped-def]
        from sdapi.batching import plan_calls

        self.calls.append(list(requests))
        self.rows.append(rows)
        if self.fail_with:
            raise RuntimeError(self.fail_with)
        calls = plan_calls(requests, rows)
        steps = requests[0].steps
        for number in range(len(calls)):
            for step in range(steps):
                if on_step is not None and not on_step(
                    number * steps + step + 1, len(calls) * steps
                ):
                    raise RuntimeError("cancelled")
        return [
            [_fake_image(r, s, given) for s in r.seeds()]
            for r, given in zip(requests, images, strict=True)
        ]


def _fake_image(request: GenerationRequest, seed: int, images: Any) -> Any:
    from PIL import Image

    if request.task is Task.UPSCALE:
        return images["init"].resize((request.width, request.height))
    return Image.new("RGB", request.output_size, (seed % 256, (seed >> 8) % 256, 7))
