"""Inputs the fuzzer (tests/fuzz) or its edge values turned up: each once answered HTTP 500, a
non-wire status, or a job that failed after it was accepted. Each now gets a clear v3 error."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sdapi.api.app import create_app
from sdapi.api.v3 import fields
from sdapi.backends import Backends, open_database, open_storage
from sdapi.settings import Settings
from sdapi.webhooks import generate_secret

PROMPT = {"prompt": "p", "width": 64, "height": 64}
_JSON = {"content-type": "application/json"}


@pytest.fixture
def sqlite_client(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """The app on a real SQLite data directory (the memory queue has no integer limits)."""
    settings = Settings(data_dir=tmp_path, sync_timeout=0, webhook_secret=generate_secret())
    queue, keys = open_database(settings)
    backends = Backends(queue, keys, open_storage(settings))
    _, key = keys.create("fuzz")
    with TestClient(create_app(settings, backends), raise_server_exceptions=False) as client:
        yield client, key
    backends.close()


def _post(client: TestClient, path: str, **kw: Any) -> dict[str, Any]:
    answer = client.post(path, **kw)
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


@pytest.mark.parametrize("job_id", ["99999999999999999999", str(2**63), "-1"])
def test_job_ids_beyond_64_bits_are_not_found(
    sqlite_client: tuple[TestClient, str], job_id: str
) -> None:
    client, key = sqlite_client
    for path in (f"/api/v3/fetch/{job_id}", f"/api/v3/cancel/{job_id}"):
        assert _post(client, path, json={"key": key})["message"] == "Request not found"


def test_a_request_id_beyond_64_bits_is_a_field_error(
    sqlite_client: tuple[TestClient, str],
) -> None:
    client, key = sqlite_client
    answer = _post(client, "/api/v3/fetch", json={"key": key, "request_id": 2**64})
    assert answer["message"] == {
        "request_id": ["The request id must be between 0 and 9223372036854775807."]
    }


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [
        ("width", "+-64", "The width must be an integer."),
        ("width", "²", "The width must be an integer."),  # isdigit() says yes, int() says no
        ("width", "1" * 5000, "The width must be an integer."),  # beyond int()'s 4300 digits
        ("guidance_scale", 10**400, "The guidance scale must be a number."),  # float() overflows
        ("prompt", "a\x00b", "The prompt must not contain NUL characters."),
        ("prompt", "\ud800", "The prompt must be valid UTF-8 text."),  # a lone surrogate
        ("track_id", "\ud800", "The track id must be valid UTF-8 text."),
    ],
)
def test_odd_values_are_field_errors(
    sqlite_client: tuple[TestClient, str], field: str, value: Any, text: str
) -> None:
    client, key = sqlite_client
    body = json.dumps({"key": key, **PROMPT, field: value})  # ASCII: "\ud800" as an escape
    answer = _post(client, "/api/v3/text2img", content=body, headers=_JSON)
    assert answer["status"] == "error" and answer["message"] == {field: [text]}
    assert client.post("/api/v3/jobs", json={"key": key}).json()["jobs"] == []  # nothing queued


def test_a_key_that_cannot_be_encoded_is_an_invalid_key(
    sqlite_client: tuple[TestClient, str],
) -> None:
    client, _ = sqlite_client
    answer = _post(client, "/api/v3/system_load", content='{"key": "\\ud800"}', headers=_JSON)
    assert answer["message"] == "Invalid Api Key"


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 100_000])
def test_deeply_nested_json_is_a_malformed_body(
    sqlite_client: tuple[TestClient, str], raw: bytes
) -> None:
    client, _ = sqlite_client
    answer = _post(client, "/api/v3/text2img", content=raw, headers=_JSON)
    assert answer["message"] == "The request body is not valid JSON or form data"
    assert answer["detail"] == "the JSON body is nested too deeply"


@pytest.mark.parametrize(
    ("ctype", "raw"),
    [
        ("multipart/form-data", b"key=a&prompt=p"),  # no boundary
        ("multipart/form-data; boundary=zz", b"key=a&prompt=p"),  # no part
    ],
)
def test_broken_multipart_is_a_wire_error_not_http_400(
    sqlite_client: tuple[TestClient, str], ctype: str, raw: bytes
) -> None:
    client, _ = sqlite_client
    answer = _post(client, "/api/v3/text2img", content=raw, headers={"content-type": ctype})
    assert answer["message"] == "The request body is not valid JSON or form data"
    assert answer["detail"].startswith("the multipart body is not valid: ")


@pytest.mark.parametrize(("steps", "strength"), [(1, 0.7), (4, 0.2), (20, 0)])
def test_img2img_with_no_denoising_step_is_refused_upfront(
    sqlite_client: tuple[TestClient, str], steps: int, strength: float
) -> None:
    """diffusers runs int(steps x strength) steps; with none the job failed in the worker."""
    client, key = sqlite_client
    body = {**PROMPT, "init_image": "https://example.com/a.png", "key": key}
    body |= {"num_inference_steps": steps, "strength": strength}
    answer = _post(client, "/api/v3/img2img", json=body)
    assert answer["message"] == {
        "strength": [
            "The strength x num inference steps must be at least 1"
            f" (this request asks for {steps} x {strength:g})."
        ]
    }


def test_the_served_document_carries_the_served_limits(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_width=128, max_steps=4)
    settings = settings.model_copy(update={"webhook_secret": generate_secret()})
    with TestClient(create_app(settings)) as client:
        doc = client.get("/openapi.json").json()
    body = doc["paths"]["/api/v3/text2img"]["post"]["requestBody"]["content"]["application/json"]
    props = body["schema"]["properties"]
    assert (props["width"]["maximum"], props["width"]["multipleOf"]) == (128, 8)
    assert props["num_inference_steps"]["maximum"] == 4
    assert props["seed"]["maximum"] == 2**64 - 1  # exact: not rounded up through a float
    assert (props["prompt"]["minLength"], props["prompt"]["maxLength"]) == (1, 5000)
    fetch = doc["paths"]["/api/v3/fetch"]["post"]["requestBody"]["content"]["application/json"]
    assert fetch["schema"]["properties"]["request_id"]["maximum"] == 2**63 - 1


def test_numbers_as_text_are_documented_as_float_reads_them() -> None:
    pattern = fields.json_schema([fields.Field("x", "float")])["properties"]["x"]["anyOf"][1]
    for text in ("7.5", " 1e1 ", ".5", "-3", "+2."):
        assert re.search(pattern["pattern"], text) and float(text) is not None
    for text in ("inf", "nan", "1_0", "abc", ""):
        assert not re.search(pattern["pattern"], text)
