"""The whole path a user walks, over real HTTP against `sdapi serve` with the tiny model."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import time

import pytest
import requests
from PIL import Image

from tests.e2e.conftest import Served, png_bytes

pytestmark = pytest.mark.e2e


def download(served: Served, url: str) -> Image.Image:
    response = served.http.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def job_rows(served: Served) -> int:
    with sqlite3.connect(served.server.data_dir / "sdapi.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


def test_text2img_is_real_and_reproducible(served: Served) -> None:
    body = {
        "prompt": "a lighthouse at dawn",
        "width": "64",
        "height": "64",
        "samples": "2",
        "num_inference_steps": "4",
        "seed": 1234,
    }
    first, second = served.post("/api/v3/text2img", body), served.post("/api/v3/text2img", body)
    assert first["status"] == second["status"] == "success", served.server.log()
    assert isinstance(first["id"], int) and second["id"] > first["id"]
    assert first["meta"]["model"] == "sdapi-tiny" and first["meta"]["seed"] == 1234
    a = [download(served, url).tobytes() for url in first["output"]]
    b = [download(served, url).tobytes() for url in second["output"]]
    assert a == b, "the same seed must give byte-identical images"
    assert a[0] != a[1], "image 2 of a request has its own seed"
    other = served.post("/api/v3/text2img", {**body, "seed": 99, "samples": 1})
    assert download(served, other["output"][0]).tobytes() != a[0]
    assert download(served, first["output"][0]).size == (64, 64)


def test_seed_page_python_example_fetches_a_queued_job(served: Served) -> None:
    queued = served.post(
        "/api/v3/text2img",
        {
            "prompt": "p",
            "width": 64,
            "height": 64,
            "num_inference_steps": 2,
            "instant_response": "yes",
        },
    )
    assert queued["status"] == "processing" and queued["output"] == []
    assert queued["fetch_result"] == f"{served.server.url}/api/v3/fetch/{queued['id']}"
    # The seed page's Python example, verbatim but for the URL and the key.
    url = queued["fetch_result"]
    payload = json.dumps({"key": served.key})
    headers = {"Content-Type": "application/json"}
    for _ in range(600):
        response = requests.request("POST", url, headers=headers, data=payload)
        print(response.text)
        if response.json()["status"] == "success":
            break
        time.sleep(0.2)
    result = response.json()
    assert result["status"] == "success" and result["id"] == queued["id"]
    assert result["output"] == queued["future_links"]
    download(served, result["output"][0])


def test_fetch_result_polled_with_form_bodies_like_the_dart_client(served: Served) -> None:
    queued = served.post(
        "/api/v3/text2img",
        {
            "prompt": "p",
            "width": 64,
            "height": 64,
            "num_inference_steps": 2,
            "instant_response": True,
        },
    )
    for _ in range(600):
        answer = served.http.post(queued["fetch_result"], data={"key": served.key}).json()
        if answer["status"] == "success":
            break
        assert answer["status"] == "processing" and "eta" in answer
        time.sleep(0.2)
    assert answer["output"] == queued["future_links"]


def test_img2img_from_a_url_and_inpaint_from_base64(served: Served, image_host: str) -> None:
    i2i = served.post(
        "/api/v3/img2img",
        {
            "prompt": "p",
            "init_image": f"{image_host}/init.png",
            "width": 64,
            "height": 64,
            "num_inference_steps": 4,
            "strength": 0.5,
            "seed": 3,
        },
    )
    assert i2i["status"] == "success", i2i
    assert i2i["meta"]["init_image"] == f"{image_host}/init.png"
    assert download(served, i2i["output"][0]).size == (64, 64)
    inp = served.post(
        "/api/v3/inpaint",
        {
            "prompt": "p",
            "width": 64,
            "height": 64,
            "num_inference_steps": 4,
            "seed": 3,
            "init_image": base64.b64encode(png_bytes()).decode(),
            "mask_image": "data:image/png;base64,"
            + base64.b64encode(png_bytes(color="white")).decode(),
        },
    )
    assert inp["status"] == "success", inp
    assert download(served, inp["output"][0]).size == (64, 64)


BAD_BODIES = [
    ("/api/v3/text2img", {}),
    ("/api/v3/text2img", {"prompt": "p", "width": 500}),
    ("/api/v3/text2img", {"prompt": "p", "height": "huge"}),
    ("/api/v3/text2img", {"prompt": "p", "samples": 5}),
    ("/api/v3/text2img", {"prompt": "p", "guidance_scale": 100}),
    ("/api/v3/text2img", {"prompt": {"nested": True}}),
    ("/api/v3/img2img", {"prompt": "p"}),
    ("/api/v3/img2img", {"prompt": "p", "init_image": "bm90IGFuIGltYWdl"}),
    ("/api/v3/img2img", {"prompt": "p", "init_image": "http://127.0.0.1:1/none.png"}),
    ("/api/v3/img2img", {"prompt": "p", "init_image": "http://10.1.2.3/x.png"}),
    ("/api/v3/inpaint", {"prompt": "p", "init_image": base64.b64encode(png_bytes()).decode()}),
    ("/api/v3/fetch", {"request_id": "abc"}),
]


@pytest.mark.parametrize(("path", "body"), BAD_BODIES)
def test_bad_input_is_a_wire_error_and_leaves_no_job(
    served: Served, path: str, body: dict[str, object]
) -> None:
    before = job_rows(served)
    answer = served.post(path, body)
    assert answer["status"] == "error" and answer["message"]
    assert job_rows(served) == before


def test_malformed_bodies_and_keys(served: Served) -> None:
    raw = served.http.post(
        "/api/v3/text2img", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert raw.status_code == 200 and raw.json()["status"] == "error"
    wrong = served.http.post("/api/v3/text2img", json={"key": "nope", "prompt": "p"}).json()
    assert wrong["message"] == "Invalid Api Key"
    bearer = served.http.post(
        "/api/v3/system_load", headers={"Authorization": f"Bearer {served.key}"}
    ).json()
    assert bearer["status"] == "ok"


def test_a_key_sees_only_its_own_jobs(served: Served) -> None:
    mine = served.post(
        "/api/v3/text2img", {"prompt": "p", "width": 64, "height": 64, "num_inference_steps": 2}
    )
    theirs = served.http.post(f"/api/v3/fetch/{mine['id']}", json={"key": served.other_key})
    unknown = served.post("/api/v3/fetch/987654321")
    assert (
        theirs.json()
        == unknown
        == {"status": "error", "message": "Request not found", "messege": "Request not found"}
    )


def test_system_load_counts_the_real_queue(served: Served) -> None:
    ids = [
        served.post(
            "/api/v3/text2img",
            {
                "prompt": str(i),
                "width": 256,
                "height": 256,
                "num_inference_steps": 10,
                "instant_response": True,
            },
        )["id"]
        for i in range(3)
    ]
    load = served.post("/api/v3/system_load")
    assert load["status"] == "ok" and 1 <= load["queue_num"] <= 3
    assert isinstance(load["queue_time"], int)
    for job_id in ids:
        assert served.wait_done(job_id)["status"] == "success"
    assert served.post("/api/v3/system_load")["queue_num"] == 0


def test_an_image_is_the_same_alone_or_batched(served: Served) -> None:
    body = {"prompt": "a red boat", "width": 64, "height": 64, "num_inference_steps": 4, "seed": 77}
    alone = served.post("/api/v3/text2img", body)
    assert alone["status"] == "success"
    # Keep the worker busy, queue four compatible jobs behind it: it takes them as one batch.
    served.post(
        "/api/v3/text2img",
        {
            "prompt": "busy",
            "width": 512,
            "height": 512,
            "num_inference_steps": 8,
            "instant_response": True,
        },
    )
    ids = [
        served.post(
            "/api/v3/text2img", {**body, "prompt": prompt, "seed": seed, "instant_response": True}
        )["id"]
        for prompt, seed in (("x", 1), ("a red boat", 77), ("y", 2), ("z", 3))
    ]
    answers = [served.wait_done(job_id) for job_id in ids]
    assert f"jobs {ids}: started" in served.server.log(), "the four jobs ran as one batch"
    batched = download(served, answers[1]["output"][0])
    assert batched.tobytes() == download(served, alone["output"][0]).tobytes()


def test_a_running_job_is_cancelled_within_seconds(served: Served) -> None:
    job_id = served.post(
        "/api/v3/text2img",
        {
            "prompt": "long",
            "width": 512,
            "height": 512,
            "num_inference_steps": 40,
            "instant_response": True,
        },
    )["id"]
    while served.post(f"/api/v3/fetch/{job_id}").get("progress", 0) == 0:
        time.sleep(0.05)
    asked = time.monotonic()
    assert served.post(f"/api/v3/cancel/{job_id}")["state"] == "cancelling"
    while (answer := served.post(f"/api/v3/fetch/{job_id}"))["status"] == "processing":
        assert time.monotonic() - asked < 30, served.server.log()
        time.sleep(0.05)
    print(f"cancelled {time.monotonic() - asked:.2f} s after the request")
    assert answer["status"] == "cancelled"
    # The worker is free again at once, not after 40 steps of a 512 px image.
    after = served.post(
        "/api/v3/text2img", {"prompt": "next", "width": 64, "height": 64, "num_inference_steps": 2}
    )
    assert after["status"] == "success"


def test_a_batched_job_is_reproduced_bit_for_bit_by_its_call_size(served: Served) -> None:
    """Two compatible jobs that queue behind a busy worker share a call; meta says its size,
    and the same request sent alone with that call_size gives back the same bytes."""
    busy = {"prompt": "busy", "width": 256, "height": 256, "num_inference_steps": 20}
    served.post("/api/v3/text2img", {**busy, "instant_response": True})
    body = {"width": 64, "height": 64, "num_inference_steps": 4, "instant_response": True}
    ids = [
        served.post("/api/v3/text2img", {**body, "prompt": f"pair {n}", "seed": n})["id"]
        for n in (1, 2)
    ]
    first, second = (served.wait_done(job_id) for job_id in ids)
    assert first["meta"]["call_size"] == second["meta"]["call_size"] == 2
    again = served.post("/api/v3/text2img", {**body, "prompt": "pair 1", "seed": 1, "call_size": 2})
    again = served.wait_done(again["id"])
    assert again["meta"]["call_size"] == 2
    assert download_bytes(served, again["output"][0]) == download_bytes(served, first["output"][0])
    alone = served.wait_done(served.post("/api/v3/text2img", {**body, "prompt": "x"})["id"])
    assert alone["meta"]["call_size"] == 1, "a lone job runs in a call of its own size"


def test_a_call_size_smaller_than_samples_is_refused(served: Served) -> None:
    answer = served.post("/api/v3/text2img", {"prompt": "x", "samples": 2, "call_size": 1})
    assert answer["status"] == "error" and "call_size" in str(answer["message"])


def download_bytes(served: Served, url: str) -> bytes:
    response = served.http.get(url)
    assert response.status_code == 200
    return response.content
