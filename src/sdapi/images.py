"""Decoding user image inputs and encoding outputs (PIL only: the API process never imports torch).

A user image (`init_image`, `mask_image`) arrives as an http(s) URL, fetched through the SSRF
guard in `sdapi.safeurl`, as a `data:` URI, or as bare base64 (standard or urlsafe alphabet,
padding and whitespace optional). Decoding is bounded: the byte size by `UrlPolicy.max_bytes`, the
pixel count by `max_pixels`, checked from the header before any pixel data is decompressed.
Every error detail starts with the field name, so the client knows which input was bad.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import urllib.parse

from PIL import Image, ImageOps, UnidentifiedImageError

from sdapi.errors import ImageFetchFailed, InvalidImage, UnsafeUrl
from sdapi.safeurl import UrlPolicy, fetch

DEFAULT_MAX_INPUT_PIXELS = 4096 * 4096
#: Decoders we expose to user bytes; a short list keeps PIL's rarer parsers out of reach.
INPUT_FORMATS = ("PNG", "JPEG", "WEBP")
PNG_COMPRESS_LEVEL = 6

# RFC 3986 scheme: base64 has no ':', so anything that starts like this is a URI, not image data.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_BASE64 = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")
# What PIL raises on corrupt, truncated or unsupported data, besides UnidentifiedImageError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def load_image_input(
    value: str,
    policy: UrlPolicy,
    *,
    field: str,
    max_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
) -> Image.Image:
    """Fetch or decode one user image as an upright RGB image.

    Transparency is dropped with `convert("RGB")`: pixels keep their stored colour, they are not
    composited on a background. An EXIF orientation is applied; animations give their first frame.
    Raises UnsafeUrl / ImageFetchFailed for URLs, InvalidImage for data that is not a usable image.
    """
    data = _input_bytes(value, policy, field)
    return _decode(data, field, max_pixels)


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes that depend only on the pixels: no timestamp, text, EXIF or ICC chunk."""
    buffer = io.BytesIO()
    # icc_profile=None stops PIL copying the source's profile from `image.info`.
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, icc_profile=None)
    return buffer.getvalue()


def encode_output(name: str, image: Image.Image) -> bytes:
    """An output in the form its name asks for: PNG, or (`.base64`) the PNG as base64 text."""
    png = encode_png(image)
    return base64.b64encode(png) if name.endswith(".base64") else png


def _input_bytes(value: str, policy: UrlPolicy, field: str) -> bytes:
    """The raw image bytes behind a URL, a data URI or bare base64."""
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise InvalidImage(detail=f"{field}: empty; expected an image URL or base64 image data")
    match = _SCHEME.match(text)
    if match is None:
        return _decode_base64(text, policy.max_bytes, field)
    scheme = match.group(1).lower()
    if scheme == "data":
        return _decode_data_uri(text[match.end() :], policy.max_bytes, field)
    if scheme in ("http", "https"):
        return _fetch_bytes(text, policy, field)
    raise UnsafeUrl(
        detail=f"{field}: URL scheme {scheme!r} is not allowed; use http(s) or base64 image data"
    )


def _fetch_bytes(url: str, policy: UrlPolicy, field: str) -> bytes:
    try:
        return fetch(url, policy).content
    except ImageFetchFailed as exc:
        # Same class (UnsafeUrl stays UnsafeUrl) and wire message; the detail names the field.
        raise type(exc)(detail=f"{field}: {exc.detail or 'fetch failed'}") from None


def _decode_data_uri(rest: str, max_bytes: int, field: str) -> bytes:
    """`data:[<media type>][;base64],<data>`; the media type is ignored, the bytes are sniffed."""
    header, comma, payload = rest.partition(",")
    if not comma:
        raise InvalidImage(detail=f"{field}: malformed data URI (no ',' before the data)")
    if header.lower().endswith(";base64"):
        # Base64 never contains '%', so unquoting only undoes an escaped URI.
        return _decode_base64(urllib.parse.unquote(payload), max_bytes, field)
    data = urllib.parse.unquote_to_bytes(payload)
    _check_size(len(data), max_bytes, field)
    return data


def _decode_base64(text: str, max_bytes: int, field: str) -> bytes:
    """Standard or urlsafe base64, with or without padding, whitespace and newlines."""
    compact = "".join(text.split())
    if not _BASE64.match(compact):
        raise InvalidImage(detail=f"{field}: not a URL and not valid base64 image data")
    # Refuse before decoding: every 4 characters are 3 bytes.
    _check_size(len(compact) * 3 // 4, max_bytes, field)
    unpadded = compact.rstrip("=").translate(str.maketrans("-_", "+/"))
    if len(unpadded) % 4 == 1:  # no byte count leaves one character over
        raise InvalidImage(detail=f"{field}: base64 data is truncated")
    try:
        return base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except binascii.Error:
        raise InvalidImage(detail=f"{field}: not valid base64 image data") from None


def _check_size(size: int, max_bytes: int, field: str) -> None:
    if size > max_bytes:
        raise InvalidImage(detail=f"{field}: image data is over the {max_bytes} byte limit")


def _decode(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode with the pixel cap checked from the header, before pixel data is inflated."""
    not_image = f"{field}: not a PNG, JPEG or WebP image"
    if not data:
        raise InvalidImage(detail=f"{field}: image data is empty")
    try:
        with Image.open(io.BytesIO(data), formats=INPUT_FORMATS) as image:
            _check_pixels(image.size, max_pixels, field)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            if image.mode == "P":  # via RGBA: PIL warns when a palette with alpha goes to RGB
                return image.convert("RGBA").convert("RGB")
            return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # PIL's own guard (the warning only arrives as an exception under a warnings filter).
        raise InvalidImage(detail=f"{field}: image is too large to decode safely") from None
    except UnidentifiedImageError:
        raise InvalidImage(detail=not_image) from None
    except _DECODE_ERRORS as exc:
        raise InvalidImage(detail=f"{field}: image data is corrupt or truncated ({exc})") from None


def _check_pixels(size: tuple[int, int], max_pixels: int, field: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImage(detail=f"{field}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidImage(
            detail=f"{field}: image is {width}x{height} pixels; the limit is {max_pixels} pixels"
        )
