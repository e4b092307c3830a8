"""The Python client against a real `sdapi serve`: generate, wait, save, cancel, errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from PIL import Image

from sdapi import ApiError, AsyncClient, Client, JobCancelled, JobResult
from tests.e2e.conftest import Served, png_bytes

pytestmark = pytest.mark.e2e

SMALL = {"width": 64, "height": 64, "steps": 2}


def assert_saved(paths: list[Path], count: int) -> None:
    assert len(paths) == count
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (64, 64)


def test_client_generates_waits_and_saves(served: Served, tmp_path: Path) -> None:
    updates: list[JobResult] = []
    with Client(served.server.url, served.key) as client:
        job = client.text2img("a red boat", samples=2, instant_response=True, **SMALL)
        assert job.pending and job.id is not None and len(job.future_links) == 2
        done = client.wait(job, timeout=120, on_update=updates.append)
        paths = client.save(done, tmp_path / "out")
        load = client.system_load()
    assert done.succeeded and done.id == job.id and done.meta["steps"] == 2
    assert updates[-1] is done and all(u.pending for u in updates[:-1])
    assert [p.parent for p in paths] == [tmp_path / "out"] * 2
    assert_saved(paths, 2)
    assert load.queue_num >= 0 and load.queue_time >= 0


def test_client_sends_image_bytes_as_base64(served: Served, tmp_path: Path) -> None:
    mask = tmp_path / "mask.png"
    mask.write_bytes(png_bytes(color="white"))
    with Client(served.server.url, served.key) as client:
        done = client.inpaint("a boat", png_bytes(), mask, strength=0.5, wait=True, **SMALL)
        assert_saved(client.save(done, [tmp_path / "painted.png"]), 1)
    assert done.meta["strength"] == 0.5


def test_async_client_generates_waits_and_saves(served: Served, tmp_path: Path) -> None:
    async def scenario() -> tuple[JobResult, list[Path]]:
        async with AsyncClient(served.server.url, served.key) as client:
            done = await client.text2img("a blue boat", wait=True, **SMALL)
            return done, await client.save(done, tmp_path)

    done, paths = asyncio.run(scenario())
    assert done.succeeded
    assert_saved(paths, 1)


def test_client_raises_the_servers_errors(served: Served) -> None:
    with Client(served.server.url, "not-a-key") as stranger, pytest.raises(ApiError) as bad_key:
        stranger.system_load()
    assert bad_key.value.message == "Invalid Api Key" and "tip" in bad_key.value.body
    with Client(served.server.url, served.key) as client:
        with pytest.raises(ApiError) as invalid:
            client.text2img("", **SMALL)
        assert invalid.value.message == {"prompt": ["The prompt field is required."]}
        job = client.text2img("mine", **SMALL)
    with Client(served.server.url, served.other_key) as other, pytest.raises(ApiError) as foreign:
        other.fetch(job)
    assert foreign.value.message == "Request not found"


def test_client_cancels_queued_and_running_jobs(served: Served) -> None:
    busy = {"width": 512, "height": 512, "steps": 40}
    with Client(served.server.url, served.key) as client:
        running = client.text2img("long", instant_response=True, **busy)
        # Another shape, so the worker cannot take it into the running job's batch.
        queued = client.text2img("behind it", instant_response=True, **SMALL)
        while client.fetch(running).progress in (None, 0):
            time.sleep(0.05)
        assert client.cancel(queued).state == "cancelled"
        assert client.cancel(running).state == "cancelling"
        with pytest.raises(JobCancelled) as caught:
            client.wait(running, timeout=60)
        assert caught.value.result.id == running.id
        assert client.fetch(queued).status == "cancelled"
        finished = client.text2img("quick", **SMALL)
        assert finished.succeeded
        with pytest.raises(ApiError, match="Request already finished") as too_late:
            client.cancel(finished)
        assert too_late.value.body["state"] == "success"
