"""What an image's bytes depend on: its request, its seed and the size of the call it was
computed in, never on the other images of the call or its place among them. So a job batched
in a call of N is reproduced bit for bit by the same request run alone with `call_size` N."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sdapi.engine.engine import Engine
from sdapi.jobs import Task
from tests.integration.test_engine import center_mask, noise_image, png, request

pytestmark = pytest.mark.engine

ROWS = 4


def alone(engine: Engine, req, images=None, rows: int | None = ROWS):  # type: ignore[no-untyped-def]
    """The request's images alone: in calls padded to `rows`, or in a call of its own size."""
    return [png(i) for i in engine.generate_batch([req], [images or {}], rows)[0]]


def test_a_job_batched_without_padding_is_reproduced_by_its_call_size(engine: Engine) -> None:
    a = request(prompt="a lighthouse", seed=1, samples=2)
    b = request(prompt="a dog", seed=2)
    c = request(prompt="a storm at sea", seed=3)
    batched = engine.generate_batch([b, a, c], [{}, {}, {}])  # one call of 4, as a worker runs
    assert [len(x) for x in batched] == [1, 2, 1]
    # meta says call_size 4: asking for it runs the job alone, padded to 4, to the same bytes.
    assert [png(i) for i in batched[1]] == alone(engine, replace(a, call_size=ROWS))
    assert [png(i) for i in batched[0]] == alone(engine, b, rows=ROWS)


def test_a_lone_job_gives_the_same_bytes_every_time(engine: Engine) -> None:
    a = request(prompt="a lighthouse", seed=5, samples=2)
    assert alone(engine, a, rows=None) == alone(engine, a, rows=None)
    assert alone(engine, a, rows=None) == alone(engine, replace(a, call_size=2), rows=2)


def test_text2img_alone_equals_batched_in_any_position(engine: Engine) -> None:
    a = request(prompt="a lighthouse", seed=1, samples=2)
    b = request(prompt="a dog", seed=2)
    c = request(prompt="a storm at sea", seed=3)
    batched = engine.generate_batch([b, a, c], [{}, {}, {}], ROWS)
    assert [len(x) for x in batched] == [1, 2, 1]
    assert [png(i) for i in batched[1]] == alone(engine, a)
    assert [png(i) for i in batched[0]] == alone(engine, b)
    assert [png(i) for i in batched[2]] == alone(engine, c)
    assert png(batched[1][0]) != png(batched[1][1]), "each sample has its own seed"


def test_jobs_split_across_calls_keep_their_images(engine: Engine) -> None:
    a = request(seed=10, samples=3)
    b = request(seed=20, samples=2, prompt="another")
    batched = engine.generate_batch([a, b], [{}, {}], 2)  # 5 images: calls of 2, 2, 1+pad
    assert [png(i) for i in batched[0]] == alone(engine, a, rows=2)
    assert [png(i) for i in batched[1]] == alone(engine, b, rows=2)


def test_img2img_and_inpaint_rows_use_their_own_inputs(engine: Engine) -> None:
    for task in (Task.IMG2IMG, Task.INPAINT):
        a, b = request(task, seed=5), request(task, seed=6, prompt="other")
        inputs_a = {"init": noise_image(1), "mask": center_mask()}
        inputs_b = {"init": noise_image(2), "mask": center_mask()}
        batched = engine.generate_batch([a, b], [inputs_a, inputs_b], ROWS)
        assert [png(i) for i in batched[0]] == alone(engine, a, inputs_a)
        assert [png(i) for i in batched[1]] == alone(engine, b, inputs_b)


def test_progress_runs_over_every_call(engine: Engine) -> None:
    seen: list[tuple[int, int]] = []

    def on_step(done: int, total: int) -> bool:
        seen.append((done, total))
        return True

    engine.generate_batch([request(samples=3, steps=2)], [{}], 1, on_step)  # 3 calls of 2 steps
    assert seen == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]


def test_an_engine_reports_its_weights_and_can_be_unloaded(models_dir) -> None:  # type: ignore[no-untyped-def]
    from sdapi.catalog.builtins import TINY_MODEL_ID

    engine = Engine(TINY_MODEL_ID, models_dir)
    assert engine.memory_bytes() == 0
    engine.load()
    size = engine.memory_bytes()
    assert 5 * 2**20 < size < 20 * 2**20  # the tiny model's ~10 MB of fp32 weights
    before = png(engine.generate(request())[0])
    engine.unload()
    assert engine.memory_bytes() == 0
    assert png(engine.generate(request())[0]) == before  # loads again on demand
