"""User image inputs (URL, data URI, base64) and deterministic PNG output."""

from __future__ import annotations

import base64
import io
import random
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image, ImageFile

from sdapi.errors import ImageFetchFailed, InvalidImage, UnsafeUrl
from sdapi.images import encode_png, load_image_input
from sdapi.safeurl import UrlPolicy

POLICY = UrlPolicy()
LOOPBACK = UrlPolicy(allow=("127.0.0.1",))
RED = (200, 30, 40)


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _noise(size: tuple[int, int], seed: int = 1) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


PNG = _encode(Image.new("RGB", (12, 10), RED), "PNG")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims `width` x `height` over a token IDAT: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _chunk_types(png: bytes) -> list[bytes]:
    types, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        types.append(png[pos + 4 : pos + 8])
        pos += 12 + length
    return types


# --------------------------------------------------------------------------- a loopback server


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        bodies = {"/red.png": PNG, "/text": b"hello, not an image"}
        body = bodies.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(5)


# --------------------------------------------------------------------------- accepted inputs


def _assert_red(image: Image.Image, size: tuple[int, int] = (12, 10)) -> None:
    assert image.mode == "RGB"
    assert image.size == size
    assert image.getpixel((3, 3)) == RED


def test_png_from_base64() -> None:
    _assert_red(load_image_input(base64.b64encode(PNG).decode(), POLICY, field="init_image"))


def test_jpeg_from_a_data_uri() -> None:
    jpeg = _encode(Image.new("RGB", (16, 8), (0, 0, 255)), "JPEG", quality=95)
    uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    image = load_image_input(uri, POLICY, field="init_image")
    assert (image.mode, image.size) == ("RGB", (16, 8))
    red, green, blue = image.getpixel((4, 4))  # type: ignore[misc]
    assert blue > 240 and red < 15 and green < 15


def test_png_from_a_data_uri_ignores_the_declared_type() -> None:
    uri = "data:application/octet-stream;base64," + base64.b64encode(PNG).decode()
    _assert_red(load_image_input(uri, POLICY, field="init_image"))


def test_urlsafe_base64_without_padding() -> None:
    # Find an image whose encoding really uses the urlsafe-only characters and needs padding.
    png = next(
        data
        for data in (_encode(_noise((9, 9), seed), "PNG") for seed in range(50))
        if len(data) % 3 and ("+" in base64.b64encode(data).decode())
    )
    text = base64.urlsafe_b64encode(png).decode().rstrip("=")
    assert "-" in text and len(text) % 4
    image = load_image_input(text, POLICY, field="init_image")
    assert image.tobytes() == _noise_from(png).tobytes()


def _noise_from(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB")


def test_base64_with_newlines_and_spaces() -> None:
    wrapped = "  " + base64.encodebytes(_encode(_noise((40, 40)), "PNG")).decode() + "\n"
    assert wrapped.count("\n") > 2
    assert load_image_input(wrapped, POLICY, field="init_image").size == (40, 40)


def test_image_from_a_url(base_url: str) -> None:
    _assert_red(load_image_input(f"{base_url}/red.png", LOOPBACK, field="init_image"))


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "LA", "CMYK"])
def test_other_modes_become_rgb(mode: str) -> None:
    source = Image.new("RGB", (6, 6), RED).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    data = base64.b64encode(_encode(source, fmt)).decode()
    image = load_image_input(data, POLICY, field="mask_image")
    assert (image.mode, image.size) == ("RGB", (6, 6))


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    jpeg = _encode(Image.new("RGB", (40, 20), RED), "JPEG", exif=exif)
    image = load_image_input(base64.b64encode(jpeg).decode(), POLICY, field="init_image")
    assert image.size == (20, 40)


# --------------------------------------------------------------------------- refused inputs


@pytest.mark.parametrize(
    ("value", "scheme"),
    [
        ("file:///etc/passwd", "file"),
        ("ftp://example.com/x.png", "ftp"),
        ("gopher://x/", "gopher"),
        ("javascript:alert(1)", "javascript"),
        ("FILE:///etc/passwd", "file"),
    ],
)
def test_other_schemes_are_unsafe(value: str, scheme: str) -> None:
    with pytest.raises(UnsafeUrl) as caught:
        load_image_input(value, POLICY, field="init_image")
    assert (caught.value.detail or "").startswith(f"init_image: URL scheme {scheme!r}")


def test_private_url_is_refused_with_the_field_name() -> None:
    with pytest.raises(UnsafeUrl) as caught:
        load_image_input("http://169.254.169.254/latest/meta-data/", POLICY, field="mask_image")
    assert caught.value.detail == "mask_image: address 169.254.169.254 is link-local; not allowed"
    assert caught.value.message == "Unable to fetch image from provided URL"


def test_fetch_failure_names_the_field(base_url: str) -> None:
    with pytest.raises(ImageFetchFailed) as caught:
        load_image_input(f"{base_url}/missing.png", LOOPBACK, field="init_image")
    assert type(caught.value) is ImageFetchFailed
    assert caught.value.detail == "init_image: HTTP 404 from 127.0.0.1"


def test_a_url_that_is_not_an_image(base_url: str) -> None:
    with pytest.raises(InvalidImage) as caught:
        load_image_input(f"{base_url}/text", LOOPBACK, field="init_image")
    assert caught.value.detail == "init_image: not a PNG, JPEG or WebP image"


@pytest.mark.parametrize("value", ["", "   \n\t"])
def test_empty_input(value: str) -> None:
    with pytest.raises(InvalidImage) as caught:
        load_image_input(value, POLICY, field="init_image")
    assert (caught.value.detail or "").startswith("init_image: empty")


@pytest.mark.parametrize("value", ["!!!not base64!!!", "abc=def", "A", "data:image/png;base64"])
def test_garbage_is_invalid(value: str) -> None:
    with pytest.raises(InvalidImage) as caught:
        load_image_input(value, POLICY, field="init_image")
    assert (caught.value.detail or "").startswith("init_image: ")
    assert caught.value.message == "The image could not be decoded"


def test_base64_of_bytes_that_are_not_an_image() -> None:
    value = base64.b64encode(b"just some text, certainly no image " * 4).decode()
    with pytest.raises(InvalidImage) as caught:
        load_image_input(value, POLICY, field="mask_image")
    assert caught.value.detail == "mask_image: not a PNG, JPEG or WebP image"


def test_an_image_format_we_do_not_accept() -> None:
    gif = base64.b64encode(_encode(Image.new("RGB", (4, 4), RED), "GIF")).decode()
    with pytest.raises(InvalidImage, match=r"^The image"):
        load_image_input(gif, POLICY, field="init_image")


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        (0.5, "init_image: image data is corrupt or truncated (image file is truncated)"),
        (0.9, "init_image: image data is corrupt or truncated (image file is truncated)"),
        (30, "init_image: not a PNG, JPEG or WebP image"),  # cut inside the header
    ],
)
def test_truncated_png(keep: float, expected: str) -> None:
    png = _encode(_noise((64, 64)), "PNG")
    cut = int(len(png) * keep) if keep < 1 else int(keep)
    with pytest.raises(InvalidImage) as caught:
        load_image_input(base64.b64encode(png[:cut]).decode(), POLICY, field="init_image")
    assert caught.value.detail == expected


def test_too_many_pixels_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    data = base64.b64encode(_encode(Image.new("RGB", (64, 64), RED), "PNG")).decode()
    with pytest.raises(InvalidImage) as caught:
        load_image_input(data, POLICY, field="init_image", max_pixels=64 * 63)
    assert caught.value.detail == "init_image: image is 64x64 pixels; the limit is 4032 pixels"


def test_exactly_max_pixels_is_accepted() -> None:
    data = base64.b64encode(_encode(Image.new("RGB", (64, 64), RED), "PNG")).decode()
    assert load_image_input(data, POLICY, field="init_image", max_pixels=64 * 64).size == (64, 64)


def test_decompression_bomb_header() -> None:
    bomb = base64.b64encode(_png_header_only(50_000, 50_000)).decode()
    with pytest.raises(InvalidImage) as caught:
        load_image_input(bomb, POLICY, field="init_image", max_pixels=10**12)
    assert caught.value.detail == "init_image: image is too large to decode safely"


def test_data_over_max_bytes_is_refused() -> None:
    data = base64.b64encode(_encode(_noise((64, 64)), "PNG")).decode()
    with pytest.raises(InvalidImage) as caught:
        load_image_input(data, UrlPolicy(max_bytes=1000), field="init_image")
    assert caught.value.detail == "init_image: image data is over the 1000 byte limit"


# --------------------------------------------------------------------------- encoding


def test_encode_png_is_deterministic_and_lossless() -> None:
    first, second = encode_png(_noise((32, 24))), encode_png(_noise((32, 24)))
    assert first == second
    with Image.open(io.BytesIO(first)) as decoded:
        assert decoded.tobytes() == _noise((32, 24)).tobytes()


def test_encode_png_carries_no_metadata() -> None:
    with Image.open(io.BytesIO(_encode(_noise((8, 8)), "PNG", icc_profile=b"x" * 64))) as src:
        assert "icc_profile" in src.info
        png = encode_png(src)
    assert set(_chunk_types(png)) == {b"IHDR", b"IDAT", b"IEND"}
