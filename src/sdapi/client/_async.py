"""The asyncio client: the same calls as `Client`, awaited; the logic lives in `_core`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from sdapi.client import _core as core
from sdapi.client._models import CancelResult, JobResult, JobSummary, Polling, SystemLoad


class AsyncClient:
    """An asyncio client for one sdapi server and one API key.

    Answers become typed results; `status: "error"` answers raise `ApiError`. Network failures
    propagate as `httpx.HTTPError`. Pass `http` to reuse your own `httpx.AsyncClient` (it is then
    not closed here), or `transport` to plug in a fake one in tests.
    """

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        timeout: float | httpx.Timeout = core.DEFAULT_TIMEOUT_S,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        polling: Polling | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._common = core.Common(base_url, key, polling)
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout, transport=transport)
        self._sleep = sleep
        self._clock = clock

    @property
    def base_url(self) -> str:
        return self._common.base_url

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _post(self, call: core.Call) -> dict[str, Any]:
        answer = await self._http.post(
            self._common.url(call.path), json=call.body, headers=core.HEADERS
        )
        return core.read_answer(answer.status_code, answer.content)

    async def _generate(self, task: str, arguments: dict[str, Any]) -> JobResult:
        result = core.submitted(await self._post(self._common.generation(task, arguments)))
        return await self.wait(result) if arguments.get("wait") else result

    async def text2img(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        width: int | None = None,
        height: int | None = None,
        samples: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
        model_id: str | None = None,
        webhook: str | None = None,
        track_id: str | None = None,
        base64: bool | None = None,
        temp: bool | None = None,
        instant_response: bool | None = None,
        wait: bool = False,
        **extra: Any,
    ) -> JobResult:
        """Generate images from a prompt. Returns the job as the server answered it (success,
        or processing when it outlasts the server's sync window); `wait=True` waits for it.
        Unset arguments are not sent (the server's defaults apply); `**extra` goes as is."""
        return await self._generate("text2img", locals())

    async def img2img(
        self,
        prompt: str,
        init_image: core.ImageInput,
        *,
        strength: float | None = None,
        negative_prompt: str | None = None,
        width: int | None = None,
        height: int | None = None,
        samples: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
        model_id: str | None = None,
        webhook: str | None = None,
        track_id: str | None = None,
        base64: bool | None = None,
        temp: bool | None = None,
        instant_response: bool | None = None,
        wait: bool = False,
        **extra: Any,
    ) -> JobResult:
        """Generate from an image and a prompt. `init_image` is a URL (or data URI / base64
        string), a path, or bytes; files and bytes are sent as base64. As `text2img` otherwise."""
        return await self._generate("img2img", locals())

    async def inpaint(
        self,
        prompt: str,
        init_image: core.ImageInput,
        mask_image: core.ImageInput,
        *,
        strength: float | None = None,
        negative_prompt: str | None = None,
        width: int | None = None,
        height: int | None = None,
        samples: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
        model_id: str | None = None,
        webhook: str | None = None,
        track_id: str | None = None,
        base64: bool | None = None,
        temp: bool | None = None,
        instant_response: bool | None = None,
        wait: bool = False,
        **extra: Any,
    ) -> JobResult:
        """Repaint the white part of `mask_image`. Images as in `img2img`."""
        return await self._generate("inpaint", locals())

    async def fetch(self, job: int | JobResult) -> JobResult:
        """Where a job stands now, whatever its status (only `wait` raises for failed ones)."""
        return JobResult.from_answer(await self._post(self._common.job_call("fetch", job)))

    async def wait(
        self,
        job: int | JobResult,
        *,
        timeout: float | None = None,
        polling: Polling | None = None,
        on_update: core.OnUpdate | None = None,
    ) -> JobResult:
        """Fetch until the job succeeds, sleeping about the server's eta between fetches.

        Raises `JobFailed`, `JobCancelled`, or `WaitTimeout` after `timeout` seconds (the job
        goes on). `on_update` sees every answer, e.g. to draw `progress` / `queue_position`.
        """
        ident = core.job_id(job)
        waiter = core.Waiter(polling or self._common.polling, timeout, self._clock)
        result = job if isinstance(job, JobResult) else await self.fetch(ident)
        while (delay := waiter.next_delay(result, on_update)) is not None:
            await self._sleep(delay)
            result = await self.fetch(ident)
        return result

    async def cancel(self, job: int | JobResult) -> CancelResult:
        """Cancel a queued job (state `cancelled`) or a running one (`cancelling`: it stops at
        its next step). A job that already ended raises `ApiError("Request already finished")`."""
        return CancelResult.from_answer(await self._post(self._common.job_call("cancel", job)))

    async def jobs(self, limit: int = 20) -> list[JobSummary]:
        """This key's newest jobs (1 to 100 of them), newest first, whatever their status."""
        return core.job_list(await self._post(self._common.call("jobs", {"limit": limit})))

    async def system_load(self) -> SystemLoad:
        """Jobs queued or running, and the seconds the server needs to drain them."""
        return SystemLoad.from_answer(await self._post(self._common.call("system_load")))

    async def save(self, result: JobResult, dest: core.Destination = ".") -> list[Path]:
        """Download every output into directory `dest` (under the URL's file name), or to the
        given paths, one per output. Base64 outputs are decoded to PNG. Returns the paths."""
        plan = core.save_plan(result, dest)
        images = await asyncio.gather(*(self._download(url) for url, _ in plan))
        # Writing a few PNGs is quick; a thread per file would cost more than it saves.
        return [core.write_file(path, data) for (_, path), data in zip(plan, images, strict=True)]

    async def _download(self, url: str) -> bytes:
        answer = await self._http.get(url)
        return core.downloaded(url, answer.status_code, answer.content)
