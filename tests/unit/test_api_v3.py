"""The v3 wire, in process: memory backends, a fake engine in a worker thread."""

from __future__ import annotations

import base64
import io
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import TypeAdapter

from sdapi.api.app import create_app
from sdapi.api.v3 import schemas
from sdapi.auth.keys import MemoryKeyStore
from sdapi.backends import Backends
from sdapi.engine.cache import EngineCache
from sdapi.errors import INVALID_KEY_TIP
from sdapi.queue.memory import MemoryQueue
from sdapi.settings import Settings
from sdapi.storage.memory import MemoryStore
from sdapi.webhooks import generate_secret
from sdapi.worker.process import served_models
from sdapi.worker.runner import Worker
from tests.helpers import FakeEngine

BASE = "http://testserver"


@dataclass
class Server:
    client: TestClient
    backends: Backends
    key: str
    other_key: str

    def post(self, path: str, body: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        payload = {"key": self.key, **(body or {})}
        response = self.client.post(path, json=payload, **kw)
        assert response.status_code == 200, response.text
        return response.json()

    def job_count(self) -> int:
        stats = self.backends.queue.stats()
        return stats.queued + stats.processing + len(self.backends.images.files)  # type: ignore[attr-defined]


def start_server(settings: Settings, *, worker: bool) -> Iterator[Server]:
    # A secret of its own, so the app never writes one into a data directory.
    settings = settings.model_copy(update={"webhook_secret": generate_secret()})
    keys = MemoryKeyStore()
    backends = Backends(MemoryQueue(), keys, MemoryStore())
    _, key = keys.create("a")
    _, other = keys.create("b")
    stop = threading.Event()
    thread = None
    if worker:  # serves what `sdapi serve` would: the models and the upscaler
        engines = EngineCache(lambda model: FakeEngine(model=model), budget_bytes=0)
        w = Worker(backends.queue, backends.images, engines, served_models(settings), lease_s=30)
        thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
        thread.start()
    with TestClient(create_app(settings, backends), base_url=BASE) as client:
        yield Server(client, backends, key, other)
    stop.set()
    if thread:
        thread.join()


def png_b64(size: tuple[int, int] = (64, 64), color: str = "red") -> str:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_text2img_success_within_the_sync_window(server: Server) -> None:
    answer = server.post(
        "/api/v3/text2img",
        {"prompt": "a lighthouse", "width": "64", "height": "64", "samples": "2", "seed": 7},
    )
    assert answer["status"] == "success"
    assert isinstance(answer["id"], int) and isinstance(answer["generationTime"], float)
    assert len(answer["output"]) == 2
    prefix = answer["meta"]["file_prefix"]
    assert answer["output"][0] == f"{BASE}/generations/{prefix}-0.png"
    meta = answer["meta"]
    assert (meta["W"], meta["H"], meta["n_samples"], meta["seed"]) == (64, 64, 2, 7)
    assert meta["prompt"] == "a lighthouse" and meta["steps"] == 20
    image = server.client.get(answer["output"][1])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (64, 64)


def test_processing_then_fetch_gives_the_promised_links(idle_server: Server) -> None:
    answer = idle_server.post("/api/v3/text2img", {"prompt": "p", "width": 64, "height": 64})
    assert answer["status"] == "processing"
    assert answer["messege"] == "Try to fetch request after given estimated time"
    assert answer["message"] == answer["messege"]
    assert answer["tip"] == "for faster speed, keep resolution upto 512x512"
    assert answer["output"] == [] and answer["webhook_status"] == ""
    assert isinstance(answer["eta"], float) and answer["eta"] > 0
    assert answer["fetch_result"] == f"{BASE}/api/v3/fetch/{answer['id']}"
    assert answer["meta"]["prompt"] == "p"
    polled = idle_server.post(f"/api/v3/fetch/{answer['id']}")
    assert polled["status"] == "processing" and polled["messege"] == "try again later."
    assert polled["queue_position"] == 1 and polled["eta"] > 0 and polled["output"] == []
    # A worker arrives and does the job: fetch now answers success at the promised URLs.
    worker = Worker.for_engine(
        idle_server.backends.queue, idle_server.backends.images, FakeEngine(), lease_s=30
    )
    assert worker.run_once()
    done = idle_server.post("/api/v3/fetch", {"request_id": str(answer["id"])})
    assert done["status"] == "success" and done["output"] == answer["future_links"]
    assert idle_server.client.get(done["output"][0]).status_code == 200


def test_instant_response_forces_processing(server: Server) -> None:
    answer = server.post("/api/v3/text2img", {"prompt": "p", "instant_response": True})
    assert answer["status"] == "processing"


def test_queue_position_counts_jobs_ahead(idle_server: Server) -> None:
    ids = [idle_server.post("/api/v3/text2img", {"prompt": str(i)})["id"] for i in range(3)]
    places = [idle_server.post(f"/api/v3/fetch/{i}")["queue_position"] for i in ids]
    assert places == [1, 2, 3]
    load = idle_server.post("/api/v3/system_load")
    assert load["status"] == "ok" and load["queue_num"] == 3
    assert isinstance(load["queue_time"], int) and load["queue_time"] > 0


def test_failed_job_answers_failed_with_the_reason(idle_server: Server) -> None:
    answer = idle_server.post("/api/v3/text2img", {"prompt": "p"})
    worker = Worker.for_engine(
        idle_server.backends.queue,
        idle_server.backends.images,
        FakeEngine(fail_with="out of memory"),
        lease_s=30,
    )
    worker.run_once()
    failed = idle_server.post(f"/api/v3/fetch/{answer['id']}")
    assert failed["status"] == "failed" and failed["message"] == "Failed, Try Again"
    assert failed["id"] == answer["id"] and failed["output"] == []
    assert "out of memory" in failed["error"]


@pytest.mark.parametrize("how", ["body", "header", "bearer"])
def test_key_may_come_from_body_header_or_bearer(server: Server, how: str) -> None:
    headers = {
        "header": {"key": server.key},
        "bearer": {"Authorization": f"Bearer {server.key}"},
    }.get(how, {})
    body = {"key": server.key} if how == "body" else {}
    answer = server.client.post("/api/v3/system_load", json=body, headers=headers).json()
    assert answer["status"] == "ok"


@pytest.mark.parametrize("key", [None, "", "wrong", "x" * 1000])
def test_bad_key_is_refused_exactly_as_the_real_api(server: Server, key: str | None) -> None:
    body = {"prompt": "p"} if key is None else {"prompt": "p", "key": key}
    response = server.client.post("/api/v3/text2img", json=body)
    assert response.status_code == 200
    assert response.json() == {
        "status": "error",
        "message": "Invalid Api Key",
        "messege": "Invalid Api Key",
        "tip": INVALID_KEY_TIP,
    }
    assert server.job_count() == 0


def test_another_keys_job_looks_unknown(idle_server: Server) -> None:
    job_id = idle_server.post("/api/v3/text2img", {"prompt": "p"})["id"]
    foreign = idle_server.client.post(
        f"/api/v3/fetch/{job_id}", json={"key": idle_server.other_key}
    ).json()
    unknown = idle_server.post(f"/api/v3/fetch/{job_id + 999}")
    garbage = idle_server.post("/api/v3/fetch/not-a-number")
    expected = {"status": "error", "message": "Request not found", "messege": "Request not found"}
    assert foreign == unknown == garbage == expected


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({}, {"prompt": ["The prompt field is required."]}),
        ({"prompt": ""}, {"prompt": ["The prompt field is required."]}),
        ({"prompt": "p", "width": "100"}, {"width": ["The width must be a multiple of 8."]}),
        ({"prompt": "p", "height": 4096}, {"height": ["The height must be between 64 and 1024."]}),
        ({"prompt": "p", "samples": "5"}, {"samples": ["The samples must be between 1 and 4."]}),
        (
            {"prompt": "p", "num_inference_steps": "many"},
            {"num_inference_steps": ["The num inference steps must be an integer."]},
        ),
    ],
)
def test_bad_fields_answer_laravel_errors_and_leave_no_job(
    server: Server, body: dict[str, Any], errors: dict[str, list[str]]
) -> None:
    answer = server.post("/api/v3/text2img", body)
    assert answer["status"] == "error" and answer["message"] == errors
    assert server.job_count() == 0


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_an_error(server: Server, raw: bytes) -> None:
    response = server.client.post(
        "/api/v3/text2img", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200 and response.json()["status"] == "error"
    assert server.job_count() == 0


def test_form_bodies_and_unknown_fields_work(server: Server) -> None:
    response = server.client.post(
        "/api/v3/text2img",
        data={
            "key": server.key,
            "prompt": "p",
            "width": "64",
            "height": "64",
            "seed": "null",
            "enhance_prompt": "yes",
            " enhance_prompt": "no",
            "model_id": "whatever",
        },
    )
    answer = response.json()
    assert answer["status"] == "success" and isinstance(answer["meta"]["seed"], int)


def test_same_seed_same_image_and_random_seed_reported(server: Server) -> None:
    a = server.post("/api/v3/text2img", {"prompt": "p", "width": 64, "height": 64, "seed": 5})
    b = server.post("/api/v3/text2img", {"prompt": "p", "width": 64, "height": 64, "seed": 5})
    assert server.client.get(a["output"][0]).content == server.client.get(b["output"][0]).content
    c = server.post("/api/v3/text2img", {"prompt": "p", "width": 64, "height": 64})
    assert 0 <= c["meta"]["seed"] < 2**32


def test_img2img_and_inpaint_take_base64_and_data_uris(server: Server) -> None:
    i2i = server.post(
        "/api/v3/img2img",
        {"prompt": "p", "init_image": png_b64(), "width": 64, "height": 64, "strength": "0.5"},
    )
    assert i2i["status"] == "success" and i2i["meta"]["strength"] == 0.5
    # base64 inputs are echoed as the stored copy's URL, never as base64.
    assert i2i["meta"]["init_image"].startswith(f"{BASE}/inputs/")
    assert server.client.get(i2i["meta"]["init_image"]).status_code == 200
    inp = server.post(
        "/api/v3/inpaint",
        {
            "prompt": "p",
            "width": 64,
            "height": 64,
            "init_image": "data:image/png;base64," + png_b64(),
            "mask_image": "data:image/png;base64," + png_b64(color="white"),
        },
    )
    assert inp["status"] == "success" and inp["meta"]["mask_image"].startswith(f"{BASE}/inputs/")


@pytest.mark.parametrize(
    "init",
    [
        "bm90IGFuIGltYWdl",
        "!!!",
        "http://127.0.0.1:9/x.png",
        "http://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
    ],
)
def test_bad_or_unsafe_images_are_refused_before_any_job(server: Server, init: str) -> None:
    answer = server.post("/api/v3/img2img", {"prompt": "p", "init_image": init})
    assert answer["status"] == "error" and "init_image" in answer["detail"]
    assert server.job_count() == 0


def test_http_errors_mode_uses_status_codes() -> None:
    for srv in start_server(Settings(http_errors=True, sync_timeout=0), worker=False):
        assert srv.client.post("/api/v3/text2img", json={"prompt": "p"}).status_code == 401
        bad = srv.client.post("/api/v3/text2img", json={"key": srv.key})
        assert bad.status_code == 422 and bad.json()["status"] == "error"


def test_unknown_route_and_missing_image_answer_in_wire_format(server: Server) -> None:
    response = server.client.post("/api/v3/nope", json={})
    assert response.status_code == 404 and response.json()["status"] == "error"
    assert server.client.get("/generations/missing-0.png").status_code == 404
    assert server.client.get("/generations/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_health_reports_workers(server: Server) -> None:
    deadline = time.monotonic() + 5
    while server.client.get("/health").json()["workers"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    health = server.client.get("/health")
    assert health.status_code == 200 and health.json()["workers"] == 1


def test_multipart_bodies_carry_large_base64_images(server: Server) -> None:
    noise = Image.frombytes("RGB", (700, 700), random.Random(0).randbytes(700 * 700 * 3))
    out = io.BytesIO()
    noise.save(out, format="PNG")
    encoded = base64.b64encode(out.getvalue()).decode()
    assert len(encoded) > 1024 * 1024  # over Starlette's default part limit
    response = server.client.post(
        "/api/v3/img2img",
        data={
            "key": server.key,
            "prompt": "p",
            "width": "64",
            "height": "64",
            "init_image": encoded,
        },
        files={"unused": ("x.txt", b"forces multipart/form-data")},
    )
    assert response.json()["status"] == "success", response.text


def test_model_id_picks_a_served_model_and_unknown_ones_are_ignored() -> None:
    settings = Settings(model=("house", "other"), sync_timeout=0)
    for srv in start_server(settings, worker=False):
        chosen = srv.post("/api/v3/text2img", {"prompt": "p", "model_id": "other"})
        assert chosen["meta"]["model"] == "other"
        # [compat] v3 clients send ids the real API ignored: served or not, never an error.
        ignored = srv.post("/api/v3/text2img", {"prompt": "p", "model_id": "midjourney"})
        assert ignored["meta"]["model"] == "house"


def test_cancel_a_queued_job_by_id(idle_server: Server) -> None:
    job_id = idle_server.post("/api/v3/text2img", {"prompt": "p"})["id"]
    foreign = idle_server.client.post(
        f"/api/v3/cancel/{job_id}", json={"key": idle_server.other_key}
    ).json()
    assert foreign["message"] == "Request not found"
    answer = idle_server.post(f"/api/v3/cancel/{job_id}")
    assert answer == {
        "status": "success",
        "id": job_id,
        "message": "Request cancelled",
        "messege": "Request cancelled",
        "state": "cancelled",
    }
    fetched = idle_server.post(f"/api/v3/fetch/{job_id}")
    assert fetched["status"] == "cancelled" and fetched["output"] == []
    worker = Worker.for_engine(
        idle_server.backends.queue, idle_server.backends.images, FakeEngine(), lease_s=30
    )
    assert not worker.run_once()  # it never runs
    again = idle_server.post("/api/v3/cancel", {"request_id": job_id})
    assert again["status"] == "success" and again["state"] == "cancelled"


def test_cancel_after_the_end_is_too_late(server: Server) -> None:
    job_id = server.post("/api/v3/text2img", {"prompt": "p", "width": 64, "height": 64})["id"]
    answer = server.post(f"/api/v3/cancel/{job_id}")
    assert answer["status"] == "error" and answer["state"] == "success"
    assert server.post(f"/api/v3/fetch/{job_id}")["status"] == "success"


def test_jobs_lists_only_the_keys_own_jobs_newest_first(server: Server) -> None:
    done = server.post("/api/v3/text2img", {"prompt": "one", "width": 64, "height": 64})
    queued = server.post("/api/v3/text2img", {"prompt": "two", "instant_response": True})
    other = server.client.post(
        "/api/v3/text2img", json={"key": server.other_key, "prompt": "theirs"}
    ).json()
    listed = server.post("/api/v3/jobs", {"limit": "5"})
    assert listed["status"] == "success"
    ids = [j["id"] for j in listed["jobs"]]
    assert ids == [queued["id"], done["id"]] and other["id"] not in ids
    first = listed["jobs"][1]
    assert first["prompt"] == "one" and first["output"] == done["output"]
    too_many = server.post("/api/v3/jobs", {"limit": 1000})
    assert too_many["status"] == "error" and "limit" in too_many["message"]


def _documented(answers: dict[int | str, dict[str, Any]]) -> TypeAdapter[Any]:
    return TypeAdapter(answers[200]["model"])


def test_every_answer_matches_the_documented_schema(idle_server: Server) -> None:
    """The OpenAPI models describe what translate builds: any drift fails here."""
    s, job = idle_server, _documented(schemas.JOB)
    queued = s.post("/api/v3/text2img", {"prompt": "p", "width": 64, "height": 64})
    doomed = s.post("/api/v3/text2img", {"prompt": "q", "width": 128, "height": 64})
    answers = [queued, doomed, s.post(f"/api/v3/fetch/{queued['id']}")]
    answers.append(s.post("/api/v3/text2img", {"prompt": ""}))  # validation error
    answers.append(s.client.post("/api/v3/fetch/1", json={"key": "nope"}).json())
    answers.append(s.post("/api/v3/fetch/999"))
    for engine in (FakeEngine(), FakeEngine(fail_with="boom")):
        Worker.for_engine(s.backends.queue, s.backends.images, engine, lease_s=30).run_once()
    answers += [s.post(f"/api/v3/fetch/{i}") for i in (queued["id"], doomed["id"])]
    cancelled = s.post("/api/v3/text2img", {"prompt": "c"})["id"]
    cancel = s.post(f"/api/v3/cancel/{cancelled}")
    answers.append(s.post(f"/api/v3/fetch/{cancelled}"))
    s.backends.queue.expire([queued["id"]])
    answers.append(s.post(f"/api/v3/fetch/{queued['id']}"))
    statuses = [job.validate_python(a).status for a in answers]
    assert statuses == [
        "processing", "processing", "processing", "error", "error", "error", "success",
        "failed", "cancelled", "error",
    ]  # fmt: skip
    _documented(schemas.CANCEL).validate_python(cancel)
    _documented(schemas.CANCEL).validate_python(s.post(f"/api/v3/cancel/{queued['id']}"))
    _documented(schemas.JOBS).validate_python(s.post("/api/v3/jobs"))
    _documented(schemas.LOAD).validate_python(s.post("/api/v3/system_load"))


def test_the_openapi_document_lists_real_answers_only(server: Server) -> None:
    doc = server.client.get("/openapi.json").json()
    fetch = doc["paths"]["/api/v3/fetch/{job_id}"]["post"]
    assert set(fetch["responses"]) == {"200"}  # no FastAPI 422: sdapi never sends it
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    statuses = doc["components"]["schemas"]["Processing"]["properties"]["status"]
    assert statuses["const"] == "processing"
    width = doc["paths"]["/api/v3/text2img"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]["properties"]["width"]
    assert (width["default"], width["minimum"], width["maximum"]) == (512, 64, 1024)


def test_scheduler_options_and_sizes_follow_the_models_family() -> None:
    settings = Settings(model=("sdapi-tiny", "sdapi-tiny-sd3"), sync_timeout=0)
    for srv in start_server(settings, worker=False):
        karras = srv.post(
            "/api/v3/text2img",
            {"prompt": "p", "scheduler": "EulerDiscreteScheduler", "use_karras_sigmas": "yes",
             "algorithm_type": None},
        )  # fmt: skip
        assert karras["status"] == "processing"
        job = srv.backends.queue.get(karras["id"])
        assert job is not None and job.request.use_karras_sigmas
        sd3 = {"prompt": "p", "model_id": "sdapi-tiny-sd3"}
        ddim = srv.post("/api/v3/text2img", {**sd3, "scheduler": "DDIMScheduler"})
        assert "does not apply to sd3 models" in ddim["message"]["scheduler"][0]
        odd = srv.post("/api/v3/text2img", {**sd3, "width": 72})
        assert "multiples of 16" in odd["message"]["width"][0]
        typo = srv.post(
            "/api/v3/text2img",
            {"prompt": "p", "scheduler": "DPMSolverMultistepScheduler",
             "algorithm_type": "dpmsolver+++"},
        )  # fmt: skip
        assert "did you mean 'dpmsolver++'" in typo["message"]["algorithm_type"][0]
        assert srv.backends.queue.stats().queued == 1


def test_the_sibling_families_share_the_handlers_with_their_own_spelling() -> None:
    settings = Settings(model=("house", "other"), sync_timeout=0)
    for srv in start_server(settings, worker=False):
        body = {"prompt": "p", "width": 64, "height": 64}
        missing = srv.post("/api/v3/dreambooth", body)
        assert missing["message"] == {"model_id": ["The model id field is required."]}
        unknown = srv.post("/api/v4/dreambooth", {**body, "model_id": "midjourney"})
        assert unknown["status"] == "error" and unknown["message"] == "Model id not found"
        v4 = srv.post("/api/v4/dreambooth/img2img", {**body, "model_id": "other",
                                                      "init_image": png_b64()})  # fmt: skip
        assert v4["status"] == "processing" and v4["meta"]["model"] == "other"
        assert v4["fetch_result"] == f"{BASE}/api/v3/dreambooth/fetch/{v4['id']}"
        assert v4["messege"] == "Try to fetch request after seconds estimated"
        fetched = srv.post("/api/v4/dreambooth/fetch", {"request_id": v4["id"]})
        assert fetched["status"] == "processing" and fetched["id"] == v4["id"]
        realtime = srv.post("/api/v6/realtime/text2img", {**body, "model_id": "nope"})
        assert realtime["meta"]["width"] == 64 and "W" not in realtime["meta"]
        assert realtime["fetch_result"].endswith(f"/api/v6/realtime/fetch/{realtime['id']}")
        assert realtime["proxy_links"] == realtime["future_links"]
        assert srv.post(f"/api/v6/images/cancel/{realtime['id']}")["state"] == "cancelled"
        models = srv.client.post("/api/v4/dreambooth/model_list", json={"key": srv.key}).json()
        assert [m["model_id"] for m in models] == ["house", "other"]
        assert models[0]["status"] == "model_ready"
        reload = srv.post("/api/v4/dreambooth/model_reload", {"model_id": "other"})
        assert reload["status"] == "success"


def test_v6_success_answers_carry_proxy_links_and_the_nsfw_flag(server: Server) -> None:
    answer = server.post(
        "/api/v6/images/text2img",
        {"prompt": "p", "width": 64, "height": 64, "model_id": "sdapi-tiny"},
    )
    assert answer["status"] == "success"
    assert answer["proxy_links"] == answer["output"]
    assert answer["nsfw_content_detected"] is False


def test_registry_models_list_and_fill_their_defaults(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(
        '[models.painter]\nsource = "sdapi-tiny"\nname = "Painter"\n'
        "[models.painter.defaults]\nwidth = 128\nsteps = 3\n"
    )
    settings = Settings(
        model=("painter", "sdapi-tiny"), models_file=str(tmp_path / "models.toml"), sync_timeout=0
    )
    for srv in start_server(settings, worker=False):
        models = srv.client.post("/api/v4/dreambooth/model_list", json={"key": srv.key}).json()
        assert (models[0]["model_id"], models[0]["model_name"]) == ("painter", "Painter")
        filled = srv.post("/api/v3/text2img", {"prompt": "p", "height": 64})
        assert (filled["meta"]["W"], filled["meta"]["H"], filled["meta"]["steps"]) == (128, 64, 3)
        mine = srv.post("/api/v3/text2img", {"prompt": "p", "width": 64, "steps": 2})
        assert (mine["meta"]["W"], mine["meta"]["steps"]) == (64, 2)
        other = srv.post("/api/v3/text2img", {"prompt": "p", "model_id": "sdapi-tiny"})
        assert other["meta"]["W"] == 512  # another model: the server's own defaults
