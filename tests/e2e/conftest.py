"""A real server process, real keys, a loopback image host: shared by the e2e tests."""

from __future__ import annotations

import io
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.e2e.server import Server, create_key, free_port


@dataclass
class Served:
    server: Server
    key: str
    other_key: str
    http: httpx.Client

    def post(self, path: str, body: dict[str, object] | None = None) -> dict[str, Any]:
        return self.server.post(self.key, path, body)

    def wait_done(self, job_id: int) -> dict[str, Any]:
        return self.server.wait_done(self.key, job_id)


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("served")
    key, other = create_key(data_dir, "a"), create_key(data_dir, "b")
    # Loopback is refused for image URLs unless allowed: that is how the tests reach their host.
    # Loopback also receives the tests' webhooks; retries start a second after a failure.
    args = ("--sync-timeout", "60", "--allow-host", "127.0.0.1", "--webhook-retry", "1")
    server = Server(data_dir, free_port(), args)
    server.start()
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield Served(server, key, other, http)
    server.stop()


def png_bytes(size: tuple[int, int] = (64, 64), color: str = "navy") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="session")
def image_host() -> Iterator[str]:
    """An HTTP server on loopback serving /init.png and /mask.png."""
    files = {"/init.png": png_bytes(), "/mask.png": png_bytes(color="white")}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="session")
def model_folder(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built tiny model in a folder of its own: `--model <folder>` loads it."""
    warm = served.post(
        "/api/v3/text2img", {"prompt": "warm", "width": 64, "height": 64, "num_inference_steps": 1}
    )
    assert warm["status"] == "success", warm
    dest = tmp_path_factory.mktemp("model") / "my-model"
    shutil.copytree(served.server.data_dir / "models" / "sdapi-tiny", dest)
    return dest
