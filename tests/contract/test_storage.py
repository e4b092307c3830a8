"""The image store contract, on every backend: memory, local directory and S3 (a real server).

The S3 backend talks over HTTP to moto's S3-compatible server on loopback (tests/s3_server.py);
it starts only when an S3 case runs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sdapi.errors import StorageError
from sdapi.storage.base import ImageStore
from sdapi.storage.local import LocalStore
from sdapi.storage.memory import MemoryStore
from sdapi.storage.s3 import S3Store
from tests.s3_server import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    client,
    create_bucket,
    moto_server,
)

PREFIX = "tenant/a"
BASE_URL = "http://api.example:7860/"
PUBLIC_URL = "https://cdn.example/images/"

INVALID_NAMES = [
    "../x.png",
    "generations/../inputs/x.png",
    "generations/a/b.png",
    "/generations/x.png",
    "other/x.png",
    "generations/x",
    "generations/x.jpg",
    "generations/.png",
    "generations/",
    "x.png",
    "",
]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


def open_s3(endpoint: str, *, prefix: str = PREFIX, public_url: str = "") -> S3Store:
    url = f"s3://{create_bucket(endpoint)}" + (f"/{prefix}" if prefix else "")
    return S3Store.from_url(
        url,
        endpoint_url=endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        public_url=public_url,
    )


@pytest.fixture(params=["memory", "local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    if request.param == "memory":
        return MemoryStore()
    if request.param == "local":
        return LocalStore(tmp_path / "images")
    return open_s3(request.getfixturevalue("s3_endpoint"))


def test_put_then_get_round_trips(store: ImageStore) -> None:
    store.put("generations/abc-0.png", b"first image")
    store.put("inputs/abc-init.png", b"an input")
    store.put("generations/empty-0.png", b"")
    assert store.get("generations/abc-0.png") == b"first image"
    assert store.get("inputs/abc-init.png") == b"an input"
    assert store.get("generations/empty-0.png") == b""


def test_put_overwrites(store: ImageStore) -> None:
    store.put("generations/abc-0.png", b"old")
    store.put("generations/abc-0.png", b"new, and longer than the old one")
    assert store.get("generations/abc-0.png") == b"new, and longer than the old one"


def test_get_of_a_missing_name_is_none(store: ImageStore) -> None:
    store.put("generations/there-0.png", b"x")
    assert store.get("generations/missing-0.png") is None
    assert store.get("inputs/there-0.png") is None  # same file, other folder


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names_are_refused(store: ImageStore, name: str) -> None:
    with pytest.raises(StorageError):
        store.put(name, b"data")
    assert store.get(name) is None


def test_delete_is_idempotent(store: ImageStore) -> None:
    store.delete("generations/never-0.png")
    store.put("generations/gone-0.png", b"x")
    store.put("generations/kept-0.png", b"y")
    store.delete("generations/gone-0.png")
    store.delete("generations/gone-0.png")
    assert store.get("generations/gone-0.png") is None
    assert store.get("generations/kept-0.png") == b"y"


def test_url_is_served_by_the_api_without_a_public_url(store: ImageStore) -> None:
    assert store.url("generations/abc-0.png", BASE_URL) == (
        "http://api.example:7860/generations/abc-0.png"
    )
    assert store.url("inputs/abc-init.png", "http://h") == "http://h/inputs/abc-init.png"


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (PREFIX, "https://cdn.example/images/tenant/a/generations/abc-0.png"),
        ("", "https://cdn.example/images/generations/abc-0.png"),
    ],
)
def test_s3_url_uses_the_public_url_and_prefix(
    s3_endpoint: str, prefix: str, expected: str
) -> None:
    store = open_s3(s3_endpoint, prefix=prefix, public_url=PUBLIC_URL)
    assert store.url("generations/abc-0.png", BASE_URL) == expected


def test_binary_content_is_preserved_exactly(store: ImageStore) -> None:
    every_byte = bytes(range(256)) * 4 + b"\r\n\n\r\x00\x1a\x89PNG\r\n\x1a\n"
    large = random.Random(7).randbytes(1 << 20)  # 1 MiB, incompressible
    store.put("generations/bytes-0.png", every_byte)
    store.put("generations/large-0.png", large)
    assert store.get("generations/bytes-0.png") == every_byte
    assert store.get("generations/large-0.png") == large


def test_concurrent_puts_from_several_threads(store: ImageStore) -> None:
    threads, per_thread = 8, 4

    def work(t: int) -> None:
        for i in range(per_thread):
            store.put(f"generations/t{t}-{i}.png", f"thread {t} image {i}".encode() * 100)
        # Everyone also writes one shared name: the survivor must be one whole image.
        store.put("generations/shared-0.png", f"winner {t}".encode() * 1000)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))  # re-raises any thread's error
    for t in range(threads):
        for i in range(per_thread):
            expected = f"thread {t} image {i}".encode() * 100
            assert store.get(f"generations/t{t}-{i}.png") == expected
    shared = store.get("generations/shared-0.png")
    assert shared in {f"winner {t}".encode() * 1000 for t in range(threads)}


# Files planted behind the store's back, under names the store must never hand out. Memory has
# no "behind": its only way in is put, which refuses them.
Plant = Callable[[str, bytes], None]


@pytest.fixture(params=["local", "s3"])
def planted(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ImageStore, Plant]:
    if request.param == "local":
        root = tmp_path / "images"

        def plant_file(name: str, data: bytes) -> None:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        return LocalStore(root), plant_file
    endpoint = request.getfixturevalue("s3_endpoint")
    store = open_s3(endpoint)
    raw = client(endpoint)

    def plant_object(name: str, data: bytes) -> None:
        raw.put_object(Bucket=store.location.bucket, Key=f"{PREFIX}/{name}", Body=data)

    return store, plant_object


@pytest.mark.parametrize(
    "name", ["../x.png", "generations/a/b.png", "other/x.png", "generations/x", "x.png"]
)
def test_invalid_names_are_not_read_even_when_present(
    planted: tuple[ImageStore, Plant], name: str
) -> None:
    store, plant = planted
    plant(name, b"secret")
    plant("generations/ok-0.png", b"fine")
    assert store.get("generations/ok-0.png") == b"fine"  # planting does reach the store
    assert store.get(name) is None
