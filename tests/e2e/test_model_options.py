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


def test_generation_options_through_a_real_server(tmp_path: Path) -> None:
    """Prompt rewriting (translated, styled, enhanced) shows in meta; upscale doubles the sides;
    panorama on SD is done and, asked of an img2img job, dropped with a note."""
    key = create_key(tmp_path)
    flags = ("--sync-timeout", "120", "--translator", "sdapi-tiny-translator")
    server = Server(tmp_path, free_port(), flags).start()
    try:
        body = {**SMALL, "prompt": "ein kleiner roter Fuchs im tiefen Schnee", "upscale": "yes",
                "multi_lingual": "yes", "enhance_style": "anime", "enhance_prompt": "yes",
                "panorama": "yes", "width": 128}  # fmt: skip
        done = server.post(key, "/api/v3/text2img", body)
        assert done["status"] == "success", done
        meta = done["meta"]
        assert meta["language"] == "de" and meta["multi_lingual"] == "yes"
        assert meta["prompt"].startswith("anime artwork of ") and "Fuchs" not in meta["prompt"]
        assert meta["prompt"].endswith("symmetrical balance, in-frame")
        assert (meta["upscale"], meta["panorama"], meta["W"]) == ("2", "yes", 128)
        image = Image.open(io.BytesIO(httpx.get(done["output"][0]).content))
        assert image.size == (256, 128)
        bad = server.post(key, "/api/v3/text2img", {**SMALL, "enhance_style": "nope"})
        assert bad["status"] == "error" and "enhance_style" in bad["message"]
    finally:
        server.stop()
