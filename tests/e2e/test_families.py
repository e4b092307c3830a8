"""Each model family through a real server: `model_id` picks a served SDXL or SD3 model, and
each answers with images of the asked size."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.server import Server, create_key, free_port

pytestmark = pytest.mark.e2e


def test_sdxl_and_sd3_models_generate_through_the_api(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    models = ("--model", "sdapi-tiny-sdxl", "--model", "sdapi-tiny-sd3")
    server = Server(tmp_path, free_port(), ("--sync-timeout", "120", *models)).start()
    try:
        for model in ("sdapi-tiny-sdxl", "sdapi-tiny-sd3"):
            body = {"prompt": "a lighthouse", "width": 64, "height": 96, "steps": 2}
            answer = server.post(key, "/api/v3/text2img", {**body, "model_id": model})
            assert answer["status"] == "success", answer
            assert answer["meta"]["model"] == model
            image = Image.open(io.BytesIO(httpx.get(answer["output"][0]).content))
            assert image.size == (64, 96)
        refused = server.post(
            key,
            "/api/v3/text2img",
            {"prompt": "x", "model_id": "sdapi-tiny-sd3", "scheduler": "DDIMScheduler"},
        )
        assert refused["status"] == "error" and "sd3" in refused["message"]["scheduler"][0]
    finally:
        server.stop()
