"""Delivery on a real server: signed webhooks to a loopback receiver (retries, a receiver down
then up, cancel and deadline events), base64 and temporary outputs, retention, and repeated
track_ids."""

from __future__ import annotations

import base64
import io
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from sdapi.webhooks import verify
from tests.e2e.conftest import Served
from tests.e2e.receiver import Delivery, Receiver
from tests.e2e.server import Server, create_key, free_port, sdapi

pytestmark = pytest.mark.e2e

SMALL = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 2}
#: Keeps the one worker busy for many seconds (cancelled by the test that submits it).
LONG = {"prompt": "long", "width": 512, "height": 512, "num_inference_steps": 40}


@pytest.fixture(scope="module")
def secret(served: Served) -> str:
    """The secret the server generated in its data directory, as an operator would read it."""
    done = sdapi("webhooks", "secret", "--data-dir", str(served.server.data_dir))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def verified(delivery: Delivery, secret: str) -> dict[str, Any]:
    return verify(delivery.body, delivery.headers, secret)


def wait_webhook_status(served: Served, job_id: int, wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while (answer := served.post(f"/api/v3/fetch/{job_id}"))["webhook_status"] != wanted:
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    return answer


def test_success_webhook_is_signed_and_carries_the_fetch_body(
    served: Served, receiver: Receiver, secret: str
) -> None:
    hook = f"{receiver.url}/done"
    answer = served.post(
        "/api/v3/text2img", {**SMALL, "webhook": hook, "track_id": "order-17", "seed": 5}
    )
    assert answer["status"] == "success"
    [delivery] = receiver.wait_for("/done")
    body = verified(delivery, secret)
    assert body["status"] == "success" and body["id"] == answer["id"]
    assert body["track_id"] == "order-17"
    assert body["output"] == answer["output"] and body["meta"]["seed"] == 5
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["webhook-id"].startswith("msg_")
    assert wait_webhook_status(served, answer["id"], "delivered")["status"] == "success"
    with pytest.raises(ValueError, match="signature"):
        verify(delivery.body.replace(b"order-17", b"order-18"), delivery.headers, secret)


def test_failed_deliveries_are_retried_with_the_same_event_id(
    served: Served, receiver: Receiver, secret: str
) -> None:
    receiver.fail_next = 2  # HTTP 500 twice, then 204
    answer = served.post("/api/v3/text2img", {**SMALL, "webhook": f"{receiver.url}/flaky"})
    deliveries = receiver.wait_for("/flaky", count=3)
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    assert all(verified(d, secret)["id"] == answer["id"] for d in deliveries)
    gaps = [b.at - a.at for a, b in itertools.pairwise(deliveries)]
    assert gaps[1] > gaps[0] * 2, f"backoff grows: {gaps}"  # 1 s, then about 4 s
    wait_webhook_status(served, answer["id"], "delivered")
    time.sleep(1.5)
    assert len(receiver.to("/flaky")) == 3  # delivered: never sent again


def test_a_receiver_that_is_down_gets_the_webhook_once_it_is_up(
    served: Served, secret: str
) -> None:
    port = free_port()
    answer = served.post(
        "/api/v3/text2img", {**SMALL, "webhook": f"http://127.0.0.1:{port}/late", "track_id": "x"}
    )
    assert answer["status"] == "success"
    wait_webhook_status(served, answer["id"], "retrying")  # connection refused, kept
    receiver = Receiver(port=port).start()
    try:
        [delivery] = receiver.wait_for("/late", timeout=30)
        assert verified(delivery, secret)["track_id"] == "x"
        wait_webhook_status(served, answer["id"], "delivered")
    finally:
        receiver.stop()


def test_progress_events_arrive_while_the_job_runs(
    served: Served, receiver: Receiver, secret: str
) -> None:
    hook = f"{receiver.url}/progress"
    body = {"prompt": "slow", "width": 512, "height": 512, "num_inference_steps": 20}
    answer = served.post(
        "/api/v3/text2img", {**body, "webhook": hook, "webhook_progress": "yes", "track_id": "p"}
    )
    assert answer["status"] == "success"
    wait_webhook_status(served, answer["id"], "delivered")
    time.sleep(0.5)  # a progress POST still in flight lands (they are never retried)
    events = [verified(d, secret) for d in receiver.to("/progress")]
    final = next(e for e in events if e["status"] == "success")
    running = [e for e in events if e is not final]
    assert final["status"] == "success" and final["track_id"] == "p"
    assert running and all(e["status"] == "processing" and e["id"] == answer["id"] for e in running)
    progress = [e["progress"] for e in running]
    assert progress == sorted(progress) and all(0 <= p < 1 for p in progress)


def test_cancel_and_deadline_send_their_webhooks(
    served: Served, receiver: Receiver, secret: str
) -> None:
    long_id = served.post(
        "/api/v3/text2img",
        {**LONG, "instant_response": True, "webhook": f"{receiver.url}/cancelled"},
    )["id"]
    late_id = served.post(
        "/api/v3/text2img",
        {**SMALL, "instant_response": True, "deadline": 1, "webhook": f"{receiver.url}/late"},
    )["id"]
    while served.post(f"/api/v3/fetch/{long_id}").get("progress", 0) == 0:
        time.sleep(0.05)
    time.sleep(1.2)  # the small job's deadline passes while the worker is busy
    served.post(f"/api/v3/cancel/{long_id}")
    cancelled = verified(receiver.wait_for("/cancelled")[0], secret)
    assert (cancelled["status"], cancelled["id"]) == ("cancelled", long_id)
    late = verified(receiver.wait_for("/late")[0], secret)
    assert (late["status"], late["id"]) == ("failed", late_id)
    assert "deadline" in late["error"]
    assert served.post(f"/api/v3/fetch/{late_id}")["status"] == "failed"


def test_a_webhook_to_a_private_address_is_refused_at_submit(served: Served) -> None:
    answer = served.post("/api/v3/text2img", {**SMALL, "webhook": "http://169.254.169.254/x"})
    assert answer["status"] == "error"
    assert "169.254.169.254" in answer["message"]["webhook"][0]


def test_base64_outputs_serve_the_png_as_base64_text(served: Served) -> None:
    answer = served.post("/api/v3/text2img", {**SMALL, "base64": "yes", "samples": 2})
    assert answer["status"] == "success" and answer["meta"]["base64"] == "yes"
    for url in answer["output"]:
        assert url.endswith(".base64")
        got = served.http.get(url)
        assert got.status_code == 200 and got.headers["content-type"].startswith("text/plain")
        image = Image.open(io.BytesIO(base64.b64decode(got.text, validate=True)))
        assert image.size == (64, 64)


def test_a_repeated_track_id_answers_the_first_job(served: Served) -> None:
    body = {**SMALL, "track_id": f"idem-{time.time()}", "instant_response": True}
    first = served.post("/api/v3/text2img", body)
    again = served.post("/api/v3/text2img", body)
    assert again["id"] == first["id"] and again["future_links"] == first["future_links"]
    other = served.server.post(served.other_key, "/api/v3/text2img", body)
    assert other["id"] != first["id"]  # track_ids are per key
    assert served.wait_done(first["id"])["status"] == "success"


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server keeping outputs 4 s and temporary links 4 s, its model loaded."""
    data_dir: Path = tmp_path_factory.mktemp("retention")
    key = create_key(data_dir)
    args = ("--sync-timeout", "60", "--retention", "4s", "--temp-ttl", "4")
    server = Server(data_dir, free_port(), args).start()
    assert server.post(key, "/api/v3/text2img", SMALL)["status"] == "success"
    yield server, key
    server.stop()


def test_temp_links_stop_working_after_their_time(short_lived: tuple[Server, str]) -> None:
    server, key = short_lived
    answer = server.post(key, "/api/v3/text2img", {**SMALL, "temp": "yes"})
    assert answer["status"] == "success" and answer["meta"]["temp"] == "yes"
    [url] = answer["output"]
    assert "/temp/" in url and httpx.get(url).status_code == 200
    expiry = int(url.rsplit("/", 1)[1].split("-", 1)[0])  # the link's end is in its name
    assert expiry - time.time() <= 4
    time.sleep(max(expiry - time.time(), 0) + 0.2)
    gone = httpx.get(url)
    assert gone.status_code == 410, gone.text


def test_retention_removes_outputs_and_fetch_says_expired(short_lived: tuple[Server, str]) -> None:
    server, key = short_lived
    answer = server.post(key, "/api/v3/text2img", SMALL)
    [url] = answer["output"]
    assert httpx.get(url).status_code == 200
    deadline = time.monotonic() + 30
    while (fetched := server.post(key, f"/api/v3/fetch/{answer['id']}"))["status"] == "success":
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    assert fetched["status"] == "error" and fetched["state"] == "expired"
    assert "expired" in fetched["message"]
    assert httpx.get(url).status_code == 404
    unknown = server.post(key, "/api/v3/fetch/999999")
    assert unknown["message"] != fetched["message"]
