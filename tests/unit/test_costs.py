"""The cost model: three terms fitted robustly, the prior where the calls cannot tell."""

from __future__ import annotations

import pytest

from sdapi.costs import PRIOR_CPU, PRIOR_GPU, Call, Cost, fit, prior_for, scale

TRUE = Cost(overhead=0.3, per_step=0.02, per_unit=0.25)


def call(units: float, steps: float, cost: Cost = TRUE, noise: float = 1.0) -> Call:
    return Call(units, steps, cost.seconds(units, steps) * noise)


def shapes() -> list[Call]:
    """Calls of several sizes, steps and image counts, as a server sees them."""
    return [
        call(images * (steps + 2) * side * side / 512**2, steps)
        for side in (64, 256, 512)
        for steps in (10, 30)
        for images in (1, 4)
    ]


def test_without_calls_the_prior_is_the_cost() -> None:
    assert fit([], PRIOR_CPU) == PRIOR_CPU
    assert prior_for("cpu") == PRIOR_CPU
    assert prior_for("cuda:1") == PRIOR_GPU


def test_calls_of_many_shapes_give_back_the_terms() -> None:
    learned = fit(shapes(), PRIOR_CPU)
    assert learned.overhead == pytest.approx(TRUE.overhead, rel=0.1)
    assert learned.per_step == pytest.approx(TRUE.per_step, rel=0.1)
    assert learned.per_unit == pytest.approx(TRUE.per_unit, rel=0.05)


def test_one_slow_call_barely_moves_the_cost() -> None:
    calls = shapes()
    calls[3] = Call(calls[3].units, calls[3].steps, calls[3].seconds * 10)  # a stall
    learned = fit(calls, PRIOR_CPU)
    for c in shapes():
        assert learned.seconds(c.units, c.steps) == pytest.approx(c.seconds, rel=0.1)


def test_calls_of_one_shape_are_predicted_and_the_rest_follows_the_prior() -> None:
    one = [call(0.3, 20)] * 5  # every call so far: 64 px, 20 steps, one image
    learned = fit(one, PRIOR_CPU)
    assert learned.seconds(0.3, 20) == pytest.approx(one[0].seconds, rel=0.05)
    # A 512 px job was never seen: its per-unit cost stays near the prior's.
    assert learned.per_unit == pytest.approx(PRIOR_CPU.per_unit, rel=0.5)
    assert min(learned.terms()) >= 0


def test_terms_never_go_negative() -> None:
    # Times that fall as units grow would need a negative per-unit cost.
    calls = [Call(1, 20, 2.0), Call(4, 20, 1.0), Call(8, 20, 0.5)]
    assert min(fit(calls, PRIOR_CPU).terms()) >= 0


def test_a_batch_keys_scale_is_the_median_ratio_of_its_calls() -> None:
    model = Cost(0.0, 0.0, 1.0)
    calls = [Call(1, 20, 2.0), Call(2, 20, 4.0), Call(1, 20, 50.0)]
    assert scale(calls, model) == pytest.approx(2.0)
    assert scale([], model) == 1.0
