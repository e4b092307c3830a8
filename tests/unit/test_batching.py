"""The batching policy: images per call by device and size, and how images are split."""

from __future__ import annotations

from sdapi.batching import Row, plan_calls, rows_for
from tests.helpers import make_request


def test_rows_by_device_and_size() -> None:
    assert rows_for("cpu", 64, 64) == 4
    assert rows_for("cpu", 256, 256) == 2
    assert rows_for("cpu", 512, 512) == 1
    assert rows_for("cuda:0", 512, 512) == 8
    assert rows_for("cuda", 1024, 1024) == 2
    assert rows_for("cuda", 1024, 1536) == 1
    assert rows_for("cpu", 512, 512, max_batch=3) == 3


def test_plan_keeps_job_order_and_seeds() -> None:
    a, b = make_request(samples=3, seed=10), make_request(samples=2, seed=20)
    calls = plan_calls([a, b], 2)
    assert calls == [
        [Row(0, 0, 10), Row(0, 1, 11)],
        [Row(0, 2, 12), Row(1, 0, 20)],
        [Row(1, 1, 21)],
    ]
    assert plan_calls([a], 4) == [[Row(0, 0, 10), Row(0, 1, 11), Row(0, 2, 12)]]
