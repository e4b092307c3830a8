"""Model options through a real server: the safety checker (forced to flag) replaces images
and says so; LoRAs and embeddings that are not installed are refused before any job."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.server import Server, create_key, free_port

pytestmark = pytest.mark.e2e

SMALL = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}


def test_a_flagged_image_is_replaced_and_reported(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    # The built-in tiny checker that flags every image: the NSFW path, end to end.
    env = {"SDAPI_SAFETY_CHECKER": "sdapi-tiny-checker-flag-all"}
    server = Server(tmp_path, free_port(), ("--sync-timeout", "120"), env=env).start()
    try:
        checked = server.post(
            key, "/api/v3/text2img", {**SMALL, "safety_checker": "yes",
                                       "safety_checker_type": "black"}
        )  # fmt: skip
        assert checked["status"] == "success", checked
        assert checked["nsfw_content_detected"] is True
        assert checked["meta"]["safety_checker"] == "yes"
        image = Image.open(io.BytesIO(httpx.get(checked["output"][0]).content))
        assert image.getextrema() == ((0, 0), (0, 0), (0, 0))  # black
        unchecked = server.post(key, "/api/v6/realtime/text2img", SMALL)
        assert unchecked["nsfw_content_detected"] is False
        missing = server.post(key, "/api/v3/text2img", {**SMALL, "lora_model": "nope"})
        assert missing["status"] == "error" and "lora_model" in missing["message"]
        bad_type = server.post(key, "/api/v3/text2img", {**SMALL, "safety_checker_type": "x"})
        assert "safety_checker_type" in bad_type["message"]
    finally:
        server.stop()
