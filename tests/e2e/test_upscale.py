"""super_resolution against a real `sdapi serve`: an image URL on a loopback host in, one URL
string out, the image behind it 4x (or 2x) the input, made by the worker's tiny x4 upscaler."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.e2e.conftest import Served

pytestmark = pytest.mark.e2e


def image_at(served: Served, url: str) -> Image.Image:
    response = served.http.get(url)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def test_a_url_in_gives_a_url_string_whose_image_is_4x(served: Served, image_host: str) -> None:
    url = f"{image_host}/init.png"  # 64x64
    answer = served.post("/api/v3/super_resolution", {"url": url, "num_inference_steps": 2})
    assert answer["status"] == "success", answer
    assert isinstance(answer["output"], str) and answer["output"].startswith(served.server.url)
    assert (answer["meta"]["url"], answer["meta"]["scale"]) == (url, 4)
    assert image_at(served, answer["output"]).size == (256, 256)


def test_a_queued_upscale_is_fetched_as_a_url_string(served: Served, image_host: str) -> None:
    body = {"url": f"{image_host}/init.png", "scale": 2, "instant_response": True, "seed": 3}
    answer = served.post("/api/v5/super_resolution", body)
    assert answer["status"] in ("processing", "success"), answer
    if answer["status"] == "processing":
        assert answer["fetch_result"] == f"{served.server.url}/api/v3/fetch/{answer['id']}"
    done = served.wait_done(answer["id"])
    assert done["status"] == "success", done
    assert done["output"] == answer["future_links"][0]
    assert image_at(served, done["output"]).size == (128, 128)
    assert done["meta"]["resize"] == "lanczos"
