"""The S3 image store against a real S3-compatible server (moto's server mode) on loopback.

Opening from settings, sharing images between machines, public links, and the failures an
operator meets at start (one clear line, fast) or at run time (a StorageError, no traceback).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdapi.backends import open_storage
from sdapi.errors import ConfigurationError, StorageError
from sdapi.settings import Settings
from sdapi.storage import s3
from sdapi.storage.s3 import S3Store
from tests.s3_server import (
    client,
    create_bucket,
    create_user,
    enforced_auth,
    moto_server,
    s3_settings,
)

#: "Fails fast": well under the time an operator would wait before suspecting a hang.
FAST_S = 3.0


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    return create_bucket(s3_endpoint)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def open_failure(settings: Settings) -> tuple[str, float]:
    """The ConfigurationError line that opening these settings ends with, and how long it took."""
    start = time.monotonic()
    with pytest.raises(ConfigurationError) as caught:
        open_storage(settings)
    elapsed = time.monotonic() - start
    line = str(caught.value)
    assert line and "\n" not in line and "Traceback" not in line
    return line, elapsed


def test_open_storage_opens_a_working_s3_store(s3_endpoint: str, bucket: str) -> None:
    store = open_storage(s3_settings(s3_endpoint, f"s3://{bucket}/some/prefix"))
    assert isinstance(store, S3Store)
    store.put("generations/abc-0.png", b"\x89PNG image")
    raw = client(s3_endpoint)
    head = raw.head_object(Bucket=bucket, Key="some/prefix/generations/abc-0.png")
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == len(b"\x89PNG image")
    assert store.get("generations/abc-0.png") == b"\x89PNG image"
    store.delete("generations/abc-0.png")
    assert raw.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_bucket_without_prefix_keeps_names_as_keys(s3_endpoint: str, bucket: str) -> None:
    store = open_storage(s3_settings(s3_endpoint, f"s3://{bucket}/"))
    store.put("inputs/abc-init.png", b"input")
    keys = [o["Key"] for o in client(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["inputs/abc-init.png"]


def test_images_written_on_one_machine_are_read_on_another(s3_endpoint: str, bucket: str) -> None:
    settings = s3_settings(s3_endpoint, f"s3://{bucket}/shared")
    api_replica, worker = open_storage(settings), open_storage(settings)
    assert api_replica is not worker
    worker.put("generations/job-0.png", b"made by the worker")
    assert api_replica.get("generations/job-0.png") == b"made by the worker"
    api_replica.delete("generations/job-0.png")
    assert worker.get("generations/job-0.png") is None


def test_prefixes_keep_stores_apart(s3_endpoint: str, bucket: str) -> None:
    one = open_storage(s3_settings(s3_endpoint, f"s3://{bucket}/one"))
    two = open_storage(s3_settings(s3_endpoint, f"s3://{bucket}/two"))
    one.put("generations/same-0.png", b"one")
    assert two.get("generations/same-0.png") is None
    two.put("generations/same-0.png", b"two")
    assert one.get("generations/same-0.png") == b"one"


def test_public_url_links_download_the_image(s3_endpoint: str, bucket: str) -> None:
    # Path-style bucket URL on the server itself stands in for a CDN or a bucket website; the
    # operator makes the bucket publicly readable, as they would for a CDN origin.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        ],
    }
    client(s3_endpoint).put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    public = f"{s3_endpoint}/{bucket}/"
    store = open_storage(s3_settings(s3_endpoint, f"s3://{bucket}/img", s3_public_url=public))
    store.put("generations/abc-0.png", b"public bytes")
    link = store.url("generations/abc-0.png", "http://api.example")
    assert link == f"{s3_endpoint}/{bucket}/img/generations/abc-0.png"
    answer = httpx.get(link)
    assert answer.status_code == 200
    assert answer.content == b"public bytes"
    assert answer.headers["content-type"] == "image/png"
    assert "immutable" in answer.headers["cache-control"]


def test_missing_bucket_fails_fast_with_one_line(s3_endpoint: str) -> None:
    line, elapsed = open_failure(s3_settings(s3_endpoint, "s3://no-such-bucket-here/p"))
    assert elapsed < FAST_S
    assert "'no-such-bucket-here' does not exist" in line
    assert s3_endpoint in line


def test_unreachable_endpoint_fails_fast_with_one_line() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    line, elapsed = open_failure(s3_settings(endpoint, "s3://bucket/p"))
    assert elapsed < FAST_S
    assert line.startswith(f"S3 endpoint {endpoint} cannot be reached")
    assert "refused" in line.lower()


def test_silent_endpoint_fails_within_the_probe_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # A socket that accepts connections (the kernel's backlog) but never answers: a hung server.
    monkeypatch.setattr(s3, "PROBE_READ_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        line, elapsed = open_failure(s3_settings(endpoint, "s3://bucket/p"))
        assert connections_waiting(silent) == 1  # no retries at start: they only delay the news
    assert 0.4 < elapsed < FAST_S
    assert line == f"S3 endpoint {endpoint} did not answer within 0.5 s"


def connections_waiting(listener: socket.socket) -> int:
    """How many connections reached a listener that never accepted (they wait in its backlog)."""
    listener.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.fixture
def users(s3_endpoint: str) -> dict[str, tuple[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    allowed = create_user(s3_endpoint, f"allowed-{suffix}", s3_access=True)
    denied = create_user(s3_endpoint, f"denied-{suffix}", s3_access=False)
    return {
        "allowed": allowed,
        "unknown key": ("AKIA" + uuid.uuid4().hex[:16].upper(), allowed[1]),
        "wrong secret": (allowed[0], "not-the-secret"),
        "no permission": denied,
    }


@pytest.mark.parametrize("who", ["unknown key", "wrong secret", "no permission"])
def test_rejected_credentials_fail_fast_with_one_line(
    s3_endpoint: str, bucket: str, users: dict[str, tuple[str, str]], who: str
) -> None:
    key_id, secret = users[who]
    settings = s3_settings(
        s3_endpoint, f"s3://{bucket}/p", s3_access_key_id=key_id, s3_secret_access_key=secret
    )
    with enforced_auth(s3_endpoint):
        # The same server and bucket accept a user who may: the refusal is about credentials.
        allowed_id, allowed_secret = users["allowed"]
        allowed = settings.model_copy(
            update={"s3_access_key_id": allowed_id, "s3_secret_access_key": allowed_secret}
        )
        open_storage(allowed).put("generations/ok-0.png", b"ok")
        line, elapsed = open_failure(settings)
    assert elapsed < FAST_S
    assert line.startswith(f"S3 access to bucket '{bucket}' at {s3_endpoint} was denied")
    assert secret not in line


def test_incomplete_credentials_are_refused() -> None:
    settings = s3_settings("http://127.0.0.1:1", "s3://bucket", s3_secret_access_key="")
    line, _ = open_failure(settings)
    assert "S3 credentials are incomplete" in line


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("s3://", "invalid S3 storage URL"),
        ("s3:///prefix", "invalid S3 storage URL"),
        ("s3://bucket?region=x", "invalid S3 storage URL"),
        ("s3://key:secret@bucket", "S3 storage URLs carry no credentials"),
        ("s3://bucket:9000", "invalid S3 bucket name"),
        ("s3://Upper_Case", "invalid S3 bucket name"),
        ("s3://ab", "invalid S3 bucket name"),
        ("s3://-bucket", "invalid S3 bucket name"),
        ("s3://my..bucket", "invalid S3 bucket name"),
        ("s3://192.168.0.1", "invalid S3 bucket name"),
        ("s3://" + "b" * 64, "invalid S3 bucket name"),
        ("s3://bucket/a//b", "invalid S3 key prefix"),
        ("s3://bucket/../up", "invalid S3 key prefix"),
        ("s3://bucket/a b", "invalid S3 key prefix"),
    ],
)
def test_bad_storage_urls_are_refused_before_any_request(url: str, complaint: str) -> None:
    # The endpoint is a closed port: a refusal that needed the network would say so instead.
    line, _ = open_failure(s3_settings(f"http://127.0.0.1:{closed_port()}", url))
    assert line.startswith(complaint)


def test_valid_names_parse_to_bucket_and_prefix() -> None:
    assert s3.parse_s3_url("s3://my-bucket.v2") == s3.S3Location("my-bucket.v2", "")
    assert s3.parse_s3_url("s3://abc/x/y_z.1/") == s3.S3Location("abc", "x/y_z.1")


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"s3_endpoint_url": "localhost:9000"}, "invalid S3 endpoint URL"),
        ({"s3_endpoint_url": "ftp://host"}, "invalid S3 endpoint URL"),
        ({"s3_public_url": "cdn.example/images"}, "invalid S3 public URL"),
    ],
)
def test_bad_endpoint_or_public_url_is_refused(
    s3_endpoint: str, bucket: str, changes: dict[str, Any], complaint: str
) -> None:
    line, _ = open_failure(s3_settings(s3_endpoint, f"s3://{bucket}", **changes))
    assert line.startswith(complaint)


def test_unsupported_storage_url_names_what_is_supported() -> None:
    line, _ = open_failure(Settings(storage="gs://bucket/images"))
    assert "s3://bucket[/prefix]" in line


def test_runtime_failures_are_storage_errors(s3_endpoint: str, bucket: str) -> None:
    store = open_storage(s3_settings(s3_endpoint, f"s3://{bucket}/p"))
    client(s3_endpoint).delete_bucket(Bucket=bucket)  # the bucket vanishes under a running store
    for call in (
        lambda: store.put("generations/a-0.png", b"x"),
        lambda: store.get("generations/a-0.png"),  # an error, not "no such image"
        lambda: store.delete("generations/a-0.png"),
    ):
        with pytest.raises(StorageError) as caught:
            call()
        assert caught.value.detail is not None
        assert "NoSuchBucket" in caught.value.detail
        assert s3_endpoint not in caught.value.detail


def test_endpoint_down_at_runtime_is_a_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3, "MAX_ATTEMPTS", 1)  # the retries' backoff would only slow this down
    with moto_server() as endpoint:
        store = open_storage(s3_settings(endpoint, f"s3://{create_bucket(endpoint)}"))
        store.put("generations/a-0.png", b"x")
    start = time.monotonic()
    with pytest.raises(StorageError) as caught:
        store.get("generations/a-0.png")
    assert time.monotonic() - start < FAST_S
    assert caught.value.detail is not None
    assert caught.value.detail.startswith("cannot read generations/a-0.png: the ")
    assert "127.0.0.1" not in caught.value.detail  # clients never learn the endpoint


def test_delete_refuses_invalid_names(s3_endpoint: str, bucket: str) -> None:
    store = open_storage(s3_settings(s3_endpoint, f"s3://{bucket}"))
    with pytest.raises(StorageError):
        store.delete("../generations/x.png")


def test_serve_with_a_missing_bucket_exits_with_one_line(s3_endpoint: str, tmp_path: Path) -> None:
    # The operator's view: `sdapi serve` stops at once with one line on stderr, no traceback.
    settings = s3_settings(s3_endpoint, "s3://no-such-bucket-here/images")
    env = {**os.environ, **{k: v for k, v in settings.as_env().items() if "_S3_" in k}}
    flags = ["--workers", "0", "--port", "0", "--data-dir", str(tmp_path)]
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sdapi", "serve", *flags, "--storage", settings.storage],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"sdapi: S3 bucket 'no-such-bucket-here' does not exist at {s3_endpoint} "
        "(create it or fix --storage)"
    ]
    assert time.monotonic() - start < 15  # mostly the interpreter's start
