"""The web playground's page and assets, served from the package with a strict policy."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from sdapi.api.app import create_app
from sdapi.auth.keys import MemoryKeyStore
from sdapi.backends import Backends
from sdapi.queue.memory import MemoryQueue
from sdapi.settings import Settings
from sdapi.storage.memory import MemoryStore
from sdapi.webhooks import generate_secret


@pytest.fixture
def client() -> Iterator[TestClient]:
    # A secret of its own, so the app never writes one into a data directory.
    settings = Settings(webhook_secret=generate_secret())
    backends = Backends(MemoryQueue(), MemoryKeyStore(), MemoryStore())
    with TestClient(create_app(settings, backends)) as client:
        yield client


def test_root_serves_the_page_with_a_strict_policy(client: TestClient) -> None:
    answer = client.get("/")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert answer.headers["x-content-type-options"] == "nosniff"
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "img-src 'self' data: blob: http: https:" in policy
    assert "unsafe-inline" not in policy
    assert 'src="/web/app.js"' in answer.text
    assert 'href="/web/style.css"' in answer.text


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/web/app.js", "text/javascript; charset=utf-8", "/api/v3/"),
        ("/web/style.css", "text/css; charset=utf-8", ".layout"),
    ],
)
def test_assets_resolve_with_their_types(
    client: TestClient, path: str, content_type: str, marker: str
) -> None:
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == content_type
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert marker in answer.text


@pytest.mark.parametrize("path", ["/web/missing.js", "/web/..%2Fapi%2Fweb.py", "/web/"])
def test_only_the_listed_assets_are_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_the_page_stays_out_of_the_api_docs(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not any(path.startswith("/web") for path in paths)


def test_every_element_the_script_looks_up_is_on_the_page(client: TestClient) -> None:
    script = client.get("/web/app.js").text
    page = client.get("/").text
    wanted = set(re.findall(r'\$\("([\w-]+)"\)', script))
    assert {"key", "gen-form", "error", "cancel", "gallery", "queue-num"} <= wanted
    assert {name for name in wanted if f'id="{name}"' not in page} == set()
