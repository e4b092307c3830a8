"""super_resolution on the wire, in process: memory backends, fake engines in a worker thread."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from pydantic import TypeAdapter

from sdapi.api.v3 import schemas
from sdapi.api.v3.protocol import FACE_ENHANCE_NOTE
from sdapi.catalog.models import check_upscaler_ref
from sdapi.catalog.work import REFERENCE_PIXELS, UPSCALE_DECODE_STEPS, batch_key, work_units
from sdapi.cli import main
from sdapi.engine.cache import EngineCache
from sdapi.errors import ConfigurationError
from sdapi.jobs import GenerationRequest, Task
from sdapi.queue.memory import MemoryQueue
from sdapi.settings import Settings
from sdapi.storage.memory import MemoryStore
from sdapi.worker.process import served_models
from sdapi.worker.runner import Worker
from tests.helpers import FakeEngine, make_request
from tests.unit.test_api_v3 import BASE, Server, png_b64, start_server

#: The input most tests upscale.
SIZE = (32, 24)

UPSCALER = "sdapi-tiny-upscaler"


def fetched_image(server: Server, url: str) -> Image.Image:
    response = server.client.get(url)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def documented(answers: dict[int | str, dict[str, Any]]) -> TypeAdapter[Any]:
    return TypeAdapter(answers[200]["model"])


def test_scale_4_answers_one_url_string_of_an_image_4x_the_input(server: Server) -> None:
    answer = server.post("/api/v3/super_resolution", {"url": png_b64((32, 24)), "seed": 5})
    assert answer["status"] == "success", answer
    prefix = answer["meta"]["file_prefix"]
    assert answer["output"] == f"{BASE}/generations/{prefix}-0.png"
    assert answer["future_links"] == [answer["output"]]
    assert isinstance(answer["generationTime"], float) and isinstance(answer["id"], int)
    meta = answer["meta"]
    assert (meta["W"], meta["H"], meta["scale"], meta["resize"]) == (128, 96, 4, "none")
    assert (meta["model"], meta["face_enhance"], meta["seed"]) == (UPSCALER, "no", 5)
    assert meta["url"].startswith(f"{BASE}/inputs/")  # base64 is echoed as the stored copy
    assert fetched_image(server, answer["output"]).size == (128, 96)
    documented(schemas.UPSCALE).validate_python(answer)


def test_scale_2_via_v5_with_init_image_resizes_the_x4_image_down(server: Server) -> None:
    body = {"init_image": png_b64((40, 20)), "scale": "2", "face_enhance": "false"}
    answer = server.post("/api/v5/super_resolution", body)
    assert answer["status"] == "success", answer
    meta = answer["meta"]
    assert (meta["W"], meta["H"], meta["resize"]) == (80, 40, "lanczos")
    assert fetched_image(server, answer["output"]).size == (80, 40)
    assert "face_enhance_note" not in meta


def test_face_enhance_is_accepted_but_meta_says_it_was_not_done(server: Server) -> None:
    body = {"url": png_b64(SIZE), "face_enhance": True, "model_id": "RealESRGAN_x4plus"}
    meta = server.post("/api/v3/super_resolution", body)["meta"]
    assert meta["face_enhance"] == "no" and meta["face_enhance_note"] == FACE_ENHANCE_NOTE
    assert meta["model_id"] == UPSCALER  # the spec's Real-ESRGAN names are ignored


def test_processing_then_fetch_answers_the_url_string(idle_server: Server) -> None:
    s = idle_server
    body = {"url": png_b64(SIZE), "track_id": "t-1", "webhook": "https://example.com/hook"}
    answer = s.post("/api/v3/super_resolution", body)
    assert answer["status"] == "processing" and answer["output"] == []
    assert answer["fetch_result"] == f"{BASE}/api/v3/fetch/{answer['id']}"
    assert answer["eta"] > 0 and len(answer["future_links"]) == 1
    assert (answer["meta"]["track_id"], answer["meta"]["webhook"]) == ("t-1", body["webhook"])
    documented(schemas.UPSCALE).validate_python(answer)
    polled = s.post(f"/api/v3/fetch/{answer['id']}")
    assert polled["status"] == "processing" and polled["queue_position"] == 1
    engines = EngineCache(lambda model: FakeEngine(model=model), budget_bytes=0)
    worker = Worker(s.backends.queue, s.backends.images, engines, [UPSCALER], lease_s=30)
    assert worker.run_once()
    done = s.post(f"/api/v3/fetch/{answer['id']}")
    assert done["status"] == "success" and done["output"] == answer["future_links"][0]
    documented(schemas.FETCH).validate_python(done)
    v6 = s.post(f"/api/v6/images/fetch/{answer['id']}")
    assert v6["output"] == done["output"] and v6["proxy_links"] == [done["output"]]
    listed = s.post("/api/v3/jobs")
    documented(schemas.JOBS).validate_python(listed)
    assert listed["jobs"][0]["task"] == "super_resolution"


SCALE_RANGE = "The scale must be between 2 and 4."
TOO_LARGE = "The url image must be at most 512x512 pixels (it is 600x100)."
TOO_SMALL = "The url image must be at least 16x16 pixels (it is 8x64)."
NOISE_RANGE = "The noise level must be between 0 and 350."


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        ({}, "url", "The url field is required."),
        ({"url": "x", "scale": 5}, "scale", SCALE_RANGE),
        ({"url": "x", "scale": 1}, "scale", SCALE_RANGE),
        ({"url": "x", "noise_level": 351}, "noise_level", NOISE_RANGE),
        ({"url": png_b64((600, 100))}, "url", TOO_LARGE),
        ({"url": png_b64((8, 64))}, "url", TOO_SMALL),
    ],
)
def test_bad_fields_are_field_errors_and_leave_nothing_behind(
    idle_server: Server, body: dict[str, Any], field: str, text: str
) -> None:
    answer = idle_server.post("/api/v3/super_resolution", body)
    assert answer["status"] == "error" and answer["message"] == {field: [text]}
    assert idle_server.job_count() == 0


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x.png", "http://169.254.169.254/latest", "file:///etc/passwd"]
)
def test_unsafe_urls_are_refused_before_any_job(idle_server: Server, url: str) -> None:
    answer = idle_server.post("/api/v3/super_resolution", {"url": url})
    assert answer["status"] == "error" and answer["detail"].startswith("url:")
    assert idle_server.job_count() == 0


def test_an_upscaler_turned_off_answers_model_not_found() -> None:
    for s in start_server(Settings(sync_timeout=0, upscaler=""), worker=False):
        answer = s.post("/api/v3/super_resolution", {"url": png_b64(SIZE)})
        assert answer["status"] == "error" and answer["message"] == "Model id not found"


def test_the_openapi_document_has_both_routes_and_the_string_output(server: Server) -> None:
    doc = server.client.get("/openapi.json").json()
    for path in ("/api/v3/super_resolution", "/api/v5/super_resolution"):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        properties = body["schema"]["properties"]
        assert body["schema"]["required"] == ["url"]
        assert (properties["scale"]["minimum"], properties["scale"]["maximum"]) == (2, 4)
    assert doc["components"]["schemas"]["Upscaled"]["properties"]["output"]["type"] == "string"


def test_the_request_keeps_its_scale_and_prices_the_x4_image() -> None:
    upscale = make_request(
        task=Task.UPSCALE, model=UPSCALER, width=256, height=128, steps=10, scale=2, noise_level=20
    )
    assert batch_key(upscale).endswith("|scale:2|noise_level:20")
    assert batch_key(upscale).split("|")[:3] == [UPSCALER, "super_resolution", "256x128"]
    # The x4 image of a 128x64 input is 512x256: half a reference image per step and decode.
    assert work_units(upscale) == (10 + UPSCALE_DECODE_STEPS) * 512 * 256 / REFERENCE_PIXELS
    assert GenerationRequest.from_json(upscale.to_json()) == upscale
    assert batch_key(make_request()) == batch_key(replace(make_request(), scale=None))
    assert "scale" not in batch_key(make_request())  # other jobs keep their keys and rates
    worker = Worker.for_engine(MemoryQueue(), MemoryStore(), FakeEngine(), lease_s=30, max_batch=4)
    assert worker.cap(upscale) == 1 and worker.cap(make_request()) == 4


def test_workers_serve_the_upscaler_beside_their_models() -> None:
    assert served_models(Settings(model=("a", "b"))) == ["a", "b", UPSCALER]
    assert served_models(Settings(model=("a",), upscaler="")) == ["a"]


def test_upscaler_refs_are_checked_without_loading(tmp_path: Path) -> None:
    assert check_upscaler_ref(UPSCALER) == UPSCALER
    assert check_upscaler_ref("stabilityai/stable-diffusion-x4-upscaler").count("/") == 1
    index = {"_class_name": "StableDiffusionPipeline"}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigurationError, match="not a StableDiffusionUpscalePipeline"):
        check_upscaler_ref(str(tmp_path))
    with pytest.raises(ConfigurationError, match="neither"):
        check_upscaler_ref("./missing/folder")


def test_serve_refuses_a_bad_upscaler_in_one_line(tmp_path: Path) -> None:
    args = ["serve", "--data-dir", str(tmp_path), "--upscaler", "./nope"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "upscaler './nope' is neither" in result.output
