"""The Python client against a scripted fake server (httpx.MockTransport): no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdapi import (
    ApiError,
    AsyncClient,
    CancelResult,
    Client,
    ClientError,
    JobCancelled,
    JobFailed,
    JobResult,
    JobSummary,
    Polling,
    ProtocolError,
    SystemLoad,
    WaitTimeout,
)
from tests.helpers import FakeClock

BASE = "http://sd.test"
KEY = "secret-key"
PNG = b"\x89PNG\r\n\x1a\n fake png bytes"
IMAGE_URL = f"{BASE}/generations/abc-0.png"
BASE64_URL = f"{BASE}/generations/abc-1.base64"

SUCCESS = {
    "status": "success",
    "generationTime": 1.25,
    "id": 7,
    "output": [IMAGE_URL],
    "meta": {"seed": 42, "steps": 2, "W": 64, "H": 64},
    "future_links": [IMAGE_URL],
}
PROCESSING = {
    "status": "processing",
    "eta": 3.0,
    "id": 7,
    "output": [],
    "messege": "Try to fetch request after given estimated time",
    "message": "Try to fetch request after given estimated time",
    "fetch_result": f"{BASE}/api/v3/fetch/7",
    "future_links": [IMAGE_URL],
    "meta": {"seed": 42},
}
FAILED = {
    "status": "failed",
    "id": 7,
    "message": "Failed, Try Again",
    "messege": "Failed, Try Again",
    "output": [],
    "error": "CUDA out of memory",
}
CANCELLED = {"status": "cancelled", "id": 7, "message": "Request cancelled", "output": []}


def fetching(**changes: Any) -> dict[str, Any]:
    """A fetch answer for a job still under way."""
    answer = {"status": "processing", "id": 7, "output": [], "progress": 0.0, "eta": 3.0}
    answer.update(changes)
    return {k: v for k, v in answer.items() if v is not None}


class FakeServer:
    """Answers each path from a script (the last answer repeats) and records every request."""

    def __init__(self) -> None:
        self.script: dict[str, list[httpx.Response]] = defaultdict(list)
        self.requests: list[httpx.Request] = []
        self.files: dict[str, bytes] = {IMAGE_URL: PNG}

    def on(self, path: str, *bodies: dict[str, Any], status: int = 200) -> FakeServer:
        self.script[path].extend(httpx.Response(status, json=body) for body in bodies)
        return self

    def raw(self, path: str, response: httpx.Response) -> FakeServer:
        self.script[path].append(response)
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "GET":
            data = self.files.get(str(request.url))
            return httpx.Response(200, content=data) if data else httpx.Response(404)
        answers = self.script[request.url.path]
        assert answers, f"unexpected request to {request.url.path}"
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.method == "POST"]

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(server: FakeServer, sleeps: list[float], clock: FakeClock) -> Iterator[Client]:
    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)

    transport = httpx.MockTransport(server)
    with Client(BASE, KEY, transport=transport, sleep=sleep, clock=clock) as c:
        yield c


# --- requests ---------------------------------------------------------------------------------


def test_text2img_posts_the_key_and_the_wire_names_of_the_fields(
    client: Client, server: FakeServer
) -> None:
    server.on("/api/v3/text2img", SUCCESS)
    client.text2img(
        "a lighthouse",
        negative_prompt="fog",
        width=64,
        height=64,
        steps=2,
        seed=0,
        base64=True,
        temp=False,
        instant_response=True,
        enhance_prompt="no",
    )
    request = server.requests[0]
    assert request.method == "POST" and str(request.url) == f"{BASE}/api/v3/text2img"
    assert request.headers["content-type"] == "application/json"
    assert server.bodies() == [
        {
            "key": KEY,
            "prompt": "a lighthouse",
            "negative_prompt": "fog",
            "width": 64,
            "height": 64,
            "num_inference_steps": 2,
            "seed": 0,
            "base64": "yes",
            "temp": "no",
            "instant_response": True,
            "enhance_prompt": "no",
        }
    ]


@pytest.mark.parametrize("base", [BASE, f"{BASE}/", f"{BASE}/api/v3", f" {BASE}/api/v3/ "])
def test_the_base_url_may_carry_a_slash_or_the_api_prefix(base: str, server: FakeServer) -> None:
    server.on("/api/v3/system_load", {"queue_num": 0, "queue_time": 0, "status": "ok"})
    with Client(base, KEY, transport=httpx.MockTransport(server)) as c:
        c.system_load()
    assert str(server.requests[0].url) == f"{BASE}/api/v3/system_load"


def test_a_base_url_without_a_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="scheme"):
        Client("127.0.0.1:7860", KEY)


def test_image_inputs_go_as_urls_or_as_base64(
    client: Client, server: FakeServer, tmp_path: Path
) -> None:
    server.on("/api/v3/img2img", SUCCESS).on("/api/v3/inpaint", SUCCESS)
    photo = tmp_path / "photo.png"
    photo.write_bytes(PNG)
    encoded = base64.b64encode(PNG).decode()
    client.img2img("x", "https://example.com/a.png", strength=0.5)
    client.img2img("x", photo)
    client.img2img("x", str(photo))
    client.inpaint("x", PNG, "data:image/png;base64,AAAA")
    client.inpaint("x", encoded, bytearray(PNG))
    sent = [(b.get("init_image"), b.get("mask_image")) for b in server.bodies()]
    assert sent == [
        ("https://example.com/a.png", None),
        (encoded, None),
        (encoded, None),
        (encoded, "data:image/png;base64,AAAA"),
        (encoded, encoded),
    ]
    assert server.bodies()[0]["strength"] == 0.5
    assert server.paths() == ["/api/v3/img2img"] * 3 + ["/api/v3/inpaint"] * 2


def test_fetch_and_cancel_put_the_id_in_the_path(client: Client, server: FakeServer) -> None:
    server.on("/api/v3/fetch/7", fetching())
    server.on("/api/v3/cancel/7", {"status": "success", "id": 7, "state": "cancelled"})
    job = client.fetch(7)
    client.cancel(job)
    assert server.paths() == ["/api/v3/fetch/7", "/api/v3/cancel/7"]
    assert server.bodies() == [{"key": KEY}, {"key": KEY}]


# --- answers ----------------------------------------------------------------------------------


def test_a_success_answer_is_a_typed_result(client: Client, server: FakeServer) -> None:
    server.on("/api/v3/text2img", SUCCESS)
    job = client.text2img("a lighthouse")
    assert job == JobResult(
        id=7,
        status="success",
        output=(IMAGE_URL,),
        generation_time=1.25,
        meta=SUCCESS["meta"],
        future_links=(IMAGE_URL,),
        raw=SUCCESS,
    )
    assert job.succeeded and not job.pending


def test_a_processing_answer_carries_eta_and_the_v3_message(
    client: Client, server: FakeServer
) -> None:
    server.on("/api/v3/text2img", PROCESSING)
    job = client.text2img("a lighthouse")
    assert job.pending and job.id == 7 and job.eta == 3.0 and job.output == ()
    assert job.message == "Try to fetch request after given estimated time"
    assert job.future_links == (IMAGE_URL,)
    assert job.raw["fetch_result"] == f"{BASE}/api/v3/fetch/7"


def test_fetch_reports_progress_and_place_in_line(client: Client, server: FakeServer) -> None:
    server.on("/api/v3/fetch/7", fetching(progress=0.25, queue_position=3, eta="4.5"))
    job = client.fetch(7)
    assert (job.progress, job.queue_position, job.eta) == (0.25, 3, 4.5)


def test_fetch_returns_failed_and_cancelled_jobs_without_raising(
    client: Client, server: FakeServer
) -> None:
    server.on("/api/v3/fetch/7", FAILED, CANCELLED)
    assert client.fetch(7).status == "failed"
    assert client.fetch(7).status == "cancelled"


def test_the_real_apis_failed_shape_parses() -> None:
    job = JobResult.from_answer(
        {"status": "failed", "id": "", "messege": "Failed, Try Again", "output": ""}
    )
    assert (job.id, job.output, job.message) == (None, (), "Failed, Try Again")
    assert JobResult.from_answer({"status": "success", "id": "12", "output": "u"}).output == ("u",)


def test_system_load(client: Client, server: FakeServer) -> None:
    server.on("/api/v3/system_load", {"queue_num": 3, "queue_time": 12, "status": "ok"})
    load = client.system_load()
    assert load == SystemLoad(queue_num=3, queue_time=12.0, raw=load.raw)
    assert load.raw["status"] == "ok"


JOB_LINE = {
    "id": 9,
    "status": "success",
    "task": "text2img",
    "prompt": "a lighthouse",
    "model": "sdapi-tiny",
    "width": 64,
    "height": 64,
    "samples": 1,
    "steps": 2,
    "seed": 42,
    "created_at": 1700000000.5,
    "started_at": 1700000001.0,
    "finished_at": 1700000002.25,
    "progress": 1.0,
    "generationTime": 1.25,
    "output": [IMAGE_URL],
    "error": None,
    "track_id": None,
    "webhook_status": None,
}


def test_jobs_lists_the_keys_jobs_as_typed_summaries(client: Client, server: FakeServer) -> None:
    queued = {**JOB_LINE, "id": 10, "status": "queued", "progress": 0, "output": []}
    queued.update(started_at=None, finished_at=None, generationTime=None, track_id="t-1")
    server.on("/api/v3/jobs", {"status": "success", "jobs": [queued, JOB_LINE]})
    jobs = client.jobs(limit=5)
    assert server.paths() == ["/api/v3/jobs"]
    assert server.bodies() == [{"key": KEY, "limit": 5}]
    assert [j.id for j in jobs] == [10, 9], "newest first, as the server sent them"
    assert jobs[1] == JobSummary(
        id=9,
        status="success",
        task="text2img",
        prompt="a lighthouse",
        model="sdapi-tiny",
        width=64,
        height=64,
        samples=1,
        steps=2,
        seed=42,
        created_at=1700000000.5,
        started_at=1700000001.0,
        finished_at=1700000002.25,
        progress=1.0,
        generation_time=1.25,
        output=(IMAGE_URL,),
        raw=JOB_LINE,
    )
    assert jobs[0].pending and not jobs[1].pending
    assert (jobs[0].started_at, jobs[0].output, jobs[0].track_id) == (None, (), "t-1")


def test_jobs_asks_for_twenty_by_default_and_parses_leniently(
    client: Client, server: FakeServer
) -> None:
    odd = {"id": "11", "status": "failed", "width": "64", "error": "CUDA out of memory"}
    server.on("/api/v3/jobs", {"status": "success", "jobs": [odd, "not a job"]})
    (job,) = client.jobs()
    assert server.bodies() == [{"key": KEY, "limit": 20}]
    assert (job.id, job.width, job.error, job.prompt, job.created_at) == (
        11,
        64,
        "CUDA out of memory",
        "",
        None,
    )


def test_jobs_without_a_list_is_a_protocol_error(client: Client, server: FakeServer) -> None:
    server.on("/api/v3/jobs", {"status": "success"})
    with pytest.raises(ProtocolError, match="no `jobs` list"):
        client.jobs()


def test_jobs_passes_api_errors_on(client: Client, server: FakeServer) -> None:
    body = {"status": "error", "message": {"limit": ["The limit must be at most 100."]}}
    server.on("/api/v3/jobs", body)
    with pytest.raises(ApiError, match=r"^limit: The limit must be at most 100\.$"):
        client.jobs(limit=500)


def test_cancel_says_whether_the_job_stopped_at_once(client: Client, server: FakeServer) -> None:
    answer = {"status": "success", "id": 7, "state": "cancelling", "message": "stops soon"}
    server.on("/api/v3/cancel/7", answer)
    assert client.cancel(7) == CancelResult(id=7, state="cancelling", message="stops soon")


# --- errors -----------------------------------------------------------------------------------


def test_a_validation_error_keeps_the_field_messages(client: Client, server: FakeServer) -> None:
    body = {"status": "error", "message": {"prompt": ["The prompt field is required."]}}
    server.on("/api/v3/text2img", body)
    with pytest.raises(ApiError) as caught:
        client.text2img("")
    error = caught.value
    assert error.message == {"prompt": ["The prompt field is required."]}
    assert str(error) == "prompt: The prompt field is required."
    assert (error.body, error.status_code) == (body, 200)
    assert isinstance(error, ClientError)


@pytest.mark.parametrize("status", [200, 401])
def test_errors_read_alike_as_http_200_or_4xx(
    client: Client, server: FakeServer, status: int
) -> None:
    body = {"status": "error", "messege": "Invalid Api Key", "tip": "..."}
    server.on("/api/v3/system_load", body, status=status)
    with pytest.raises(ApiError, match=r"^Invalid Api Key$") as caught:
        client.system_load()
    assert caught.value.status_code == status and caught.value.body["tip"] == "..."


def test_cancelling_a_finished_job_is_an_api_error(client: Client, server: FakeServer) -> None:
    body = {"status": "error", "id": 7, "message": "Request already finished", "state": "success"}
    server.on("/api/v3/cancel/7", body)
    with pytest.raises(ApiError, match="Request already finished") as caught:
        client.cancel(7)
    assert caught.value.body["state"] == "success"


def test_an_answer_that_is_not_json_is_a_protocol_error(client: Client, server: FakeServer) -> None:
    server.raw("/api/v3/fetch/7", httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(ProtocolError, match="HTTP 502") as caught:
        client.fetch(7)
    assert caught.value.status_code == 502


def test_a_generation_that_failed_at_once_raises_with_the_result(
    client: Client, server: FakeServer
) -> None:
    server.on("/api/v3/text2img", FAILED)
    with pytest.raises(JobFailed, match="Failed, Try Again \\(CUDA out of memory\\)") as caught:
        client.text2img("x")
    assert caught.value.result.id == 7 and caught.value.message == "Failed, Try Again"


def test_transport_errors_propagate_as_httpx_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with (
        Client(BASE, KEY, transport=httpx.MockTransport(refuse)) as c,
        pytest.raises(httpx.ConnectError),
    ):
        c.system_load()


# --- wait -------------------------------------------------------------------------------------


def test_wait_sleeps_about_the_eta_and_backs_off_without_one(
    client: Client, server: FakeServer, sleeps: list[float]
) -> None:
    server.on(
        "/api/v3/fetch/7",
        fetching(eta=3.0),
        fetching(eta=None),
        fetching(eta=None),
        fetching(eta=0.0),
        fetching(eta=0.1),
        fetching(eta=60.0),
        SUCCESS,
    )
    seen: list[str] = []
    job = client.wait(7, on_update=lambda r: seen.append(r.status))
    assert job.succeeded and job.output == (IMAGE_URL,)
    # eta 3; no eta: 1, then 1.5, then 2.25; eta 0.1 clamped up to 0.5; eta 60 down to 10.
    assert sleeps == [3.0, 1.0, 1.5, 2.25, 0.5, 10.0]
    assert seen == ["processing"] * 6 + ["success"]


def test_wait_takes_its_pacing_from_a_polling_policy(
    client: Client, server: FakeServer, sleeps: list[float]
) -> None:
    server.on("/api/v3/fetch/7", fetching(eta=30.0), fetching(eta=None), SUCCESS)
    client.wait(7, polling=Polling(minimum=0.1, maximum=2.0, first=0.2, factor=2))
    assert sleeps == [2.0, 0.2]


def test_wait_starts_from_a_processing_result_without_fetching_first(
    client: Client, server: FakeServer, sleeps: list[float]
) -> None:
    server.on("/api/v3/text2img", PROCESSING).on("/api/v3/fetch/7", SUCCESS)
    job = client.text2img("x", wait=True)
    assert job.succeeded
    assert server.paths() == ["/api/v3/text2img", "/api/v3/fetch/7"]
    assert sleeps == [3.0]


def test_wait_returns_a_finished_result_at_once(client: Client, server: FakeServer) -> None:
    job = JobResult.from_answer(SUCCESS)
    assert client.wait(job) is job
    assert server.requests == []


@pytest.mark.parametrize(("ending", "error"), [(FAILED, JobFailed), (CANCELLED, JobCancelled)])
def test_wait_raises_when_the_job_ends_without_images(
    client: Client, server: FakeServer, ending: dict[str, Any], error: type[ClientError]
) -> None:
    server.on("/api/v3/fetch/7", fetching(), ending)
    with pytest.raises(error) as caught:
        client.wait(7)
    assert caught.value.result.status == ending["status"]  # type: ignore[attr-defined]


def test_wait_gives_up_after_its_timeout(
    client: Client, server: FakeServer, sleeps: list[float]
) -> None:
    server.on("/api/v3/fetch/7", fetching(eta=3.0, progress=0.5))
    with pytest.raises(WaitTimeout, match="Job 7 still processing after 5 s") as caught:
        client.wait(7, timeout=5)
    assert sleeps == [3.0, 2.0], "the last sleep ends at the deadline"
    assert caught.value.result.progress == 0.5 and caught.value.timeout == 5


def test_wait_passes_api_errors_on(client: Client, server: FakeServer) -> None:
    server.on("/api/v3/fetch/8", {"status": "error", "message": "Request not found"})
    with pytest.raises(ApiError, match="Request not found"):
        client.wait(8)


# --- save -------------------------------------------------------------------------------------


def test_save_downloads_every_output_into_a_directory(
    client: Client, server: FakeServer, tmp_path: Path
) -> None:
    server.files[BASE64_URL] = base64.b64encode(PNG) + b"\n"
    job = JobResult.from_answer({**SUCCESS, "output": [IMAGE_URL, BASE64_URL]})
    paths = client.save(job, tmp_path / "out")
    assert paths == [tmp_path / "out" / "abc-0.png", tmp_path / "out" / "abc-1.png"]
    assert [p.read_bytes() for p in paths] == [PNG, PNG], "base64 text is decoded to the PNG"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["abc-0.png", "abc-1.png"]


def test_save_writes_to_the_given_paths_in_order(
    client: Client, server: FakeServer, tmp_path: Path
) -> None:
    server.files[f"{BASE}/generations/abc-1.png.base64"] = b"data:image/png;base64," + (
        base64.b64encode(PNG).rstrip(b"=")
    )
    job = JobResult.from_answer(
        {**SUCCESS, "output": [IMAGE_URL, f"{BASE}/generations/abc-1.png.base64"]}
    )
    paths = client.save(job, [tmp_path / "first.png", str(tmp_path / "second.png")])
    assert [p.read_bytes() for p in paths] == [PNG, PNG]
    with pytest.raises(ValueError, match="2 outputs but 1 paths"):
        client.save(job, [tmp_path / "only.png"])


def test_save_refuses_a_job_without_outputs(client: Client, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no outputs"):
        client.save(JobResult.from_answer(PROCESSING), tmp_path)


def test_a_failed_download_or_bad_base64_is_a_protocol_error(
    client: Client, server: FakeServer, tmp_path: Path
) -> None:
    missing = JobResult.from_answer({**SUCCESS, "output": [f"{BASE}/generations/gone.png"]})
    with pytest.raises(ProtocolError, match="HTTP 404"):
        client.save(missing, tmp_path)
    server.files[BASE64_URL] = b"not base64 at all!"
    with pytest.raises(ProtocolError, match="not valid base64"):
        client.save(JobResult.from_answer({**SUCCESS, "output": [BASE64_URL]}), tmp_path)
    assert list(tmp_path.iterdir()) == [], "nothing half-written is left behind"


# --- lifecycle --------------------------------------------------------------------------------


def test_a_client_closes_only_the_http_client_it_made(server: FakeServer) -> None:
    own = httpx.Client(transport=httpx.MockTransport(server))
    with Client(BASE, KEY, http=own):
        pass
    assert not own.is_closed
    own.close()
    made = Client(BASE, KEY, transport=httpx.MockTransport(server))
    with made:
        pass
    assert made._http.is_closed


def test_importing_sdapi_does_not_load_the_client_or_httpx() -> None:
    code = (
        "import sys, sdapi; assert 'httpx' not in sys.modules and 'sdapi.client' not in "
        "sys.modules; from sdapi import Client, AsyncClient; assert 'sdapi.client' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- async ------------------------------------------------------------------------------------


def test_the_async_client_generates_waits_and_saves(
    server: FakeServer, clock: FakeClock, tmp_path: Path
) -> None:
    server.on("/api/v3/text2img", PROCESSING)
    server.on("/api/v3/fetch/7", fetching(eta=None, queue_position=1), SUCCESS)
    server.files[BASE64_URL] = base64.b64encode(PNG)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def scenario() -> tuple[JobResult, list[Path], list[int | None]]:
        transport = httpx.MockTransport(server)
        async with AsyncClient(BASE, KEY, transport=transport, sleep=sleep, clock=clock) as c:
            job = await c.text2img("x", steps=2, base64=True)
            places: list[int | None] = []
            done = await c.wait(job, on_update=lambda r: places.append(r.queue_position))
            done = JobResult.from_answer({**done.raw, "output": [IMAGE_URL, BASE64_URL]})
            return done, await c.save(done, tmp_path), places

    job, paths, places = asyncio.run(scenario())
    assert job.succeeded and sleeps == [3.0, 1.0] and places == [None, 1, None]
    assert [p.read_bytes() for p in paths] == [PNG, PNG]
    assert server.bodies()[0] == {
        "key": KEY,
        "prompt": "x",
        "num_inference_steps": 2,
        "base64": "yes",
    }


def test_the_async_client_lists_jobs(server: FakeServer) -> None:
    server.on("/api/v3/jobs", {"status": "success", "jobs": [JOB_LINE]})

    async def scenario() -> list[JobSummary]:
        async with AsyncClient(BASE, KEY, transport=httpx.MockTransport(server)) as c:
            return await c.jobs(limit=3)

    jobs = asyncio.run(scenario())
    assert [(j.id, j.status, j.output) for j in jobs] == [(9, "success", (IMAGE_URL,))]
    assert server.bodies() == [{"key": KEY, "limit": 3}]


def test_the_async_client_raises_the_same_errors(server: FakeServer) -> None:
    server.on("/api/v3/img2img", {"status": "error", "message": "Request not found"}, status=404)
    server.on("/api/v3/cancel/7", {"status": "error", "message": "Request already finished"})
    server.on("/api/v3/fetch/7", CANCELLED)

    async def scenario() -> list[type[BaseException]]:
        raised: list[type[BaseException]] = []
        async with AsyncClient(BASE, KEY, transport=httpx.MockTransport(server)) as c:
            for call in (c.img2img("x", PNG), c.cancel(7), c.wait(7)):
                try:
                    await call
                except ClientError as error:
                    raised.append(type(error))
        return raised

    assert asyncio.run(scenario()) == [ApiError, ApiError, JobCancelled]
