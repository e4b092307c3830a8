"""The batching policy: a lone job is never padded; calls share whole jobs up to a cap."""

from __future__ import annotations

from dataclasses import replace

from sdapi.batching import Row, call_cap, cap_for, plan_calls
from sdapi.catalog.work import batch_key
from sdapi.jobs import Task
from tests.helpers import make_request


def test_caps_by_device_and_size() -> None:
    assert call_cap("cpu", 64, 64) == 8
    assert call_cap("cpu", 128, 128) == 8
    assert call_cap("cpu", 256, 256) == 4
    assert call_cap("cpu", 512, 512) == 1
    assert call_cap("cuda:0", 512, 512) == 8
    assert call_cap("cuda", 1024, 1024) == 2
    assert call_cap("cuda", 1024, 1536) == 1
    assert call_cap("cpu", 512, 512, max_batch=3) == 3


def test_an_exact_call_size_or_an_upscale_sets_the_cap() -> None:
    assert cap_for(make_request(width=64, height=64, call_size=3), "cpu") == 3
    assert cap_for(replace(make_request(), task=Task.UPSCALE), "cuda") == 1
    assert cap_for(make_request(width=64, height=64), "cpu", max_batch=2) == 2


def test_without_rows_a_batch_is_one_call_of_its_own_size() -> None:
    a, b = make_request(samples=3, seed=10), make_request(samples=2, seed=20)
    assert plan_calls([a]) == [[Row(0, 0, 10), Row(0, 1, 11), Row(0, 2, 12)]]
    assert [len(call) for call in plan_calls([a, b])] == [5]


def test_with_rows_calls_hold_that_many_images_in_order() -> None:
    a, b = make_request(samples=3, seed=10), make_request(samples=2, seed=20)
    assert plan_calls([a, b], 2) == [
        [Row(0, 0, 10), Row(0, 1, 11)],
        [Row(0, 2, 12), Row(1, 0, 20)],
        [Row(1, 1, 21)],
    ]
    assert plan_calls([a], 4) == [[Row(0, 0, 10), Row(0, 1, 11), Row(0, 2, 12)]]


def test_call_size_is_part_of_the_batch_key() -> None:
    plain = make_request()
    assert "call_size" not in batch_key(plain)
    assert batch_key(replace(plain, call_size=4)) != batch_key(plain)
