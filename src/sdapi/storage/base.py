"""The image store port.

Names are `<folder>/<file>`: `generations/<uuid>-<i>.png` for outputs, `inputs/<uuid>-init.png`
for images clients sent, `temp/<expiry>-<uuid>-<i>.png` for outputs whose links stop working at
`<expiry>` (unix seconds). An output asked for as base64 ends in `.base64` and holds the PNG as
base64 text. Names are checked against one pattern, so a name can never walk out of
the store (no `..`, no slashes inside the file part).
"""

from __future__ import annotations

import re
from typing import Protocol

FOLDERS = ("generations", "inputs", "temp")
NAME_PATTERN = re.compile(
    r"^(generations|inputs|temp)/[A-Za-z0-9][A-Za-z0-9_-]{0,127}\.(png|base64)$"
)
CONTENT_TYPES = {"png": "image/png", "base64": "text/plain; charset=us-ascii"}


def is_valid_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None


def content_type(name: str) -> str:
    return CONTENT_TYPES[name.rsplit(".", 1)[-1]]


def temp_expiry(name: str) -> int | None:
    """When a `temp/` name's link stops working (unix seconds); None for other names."""
    folder, _, file = name.partition("/")
    head = file.split("-", 1)[0]
    return int(head) if folder == "temp" and head.isdigit() else None


class ImageStore(Protocol):
    def put(self, name: str, data: bytes) -> None:
        """Store atomically: readers see the whole file or none (never a torn write)."""
        ...

    def get(self, name: str) -> bytes | None:
        """The file's bytes, or None if it does not exist (or the name is not valid)."""
        ...

    def delete(self, name: str) -> None:
        """Remove if present; idempotent."""
        ...

    def url(self, name: str, base_url: str) -> str:
        """The absolute URL clients download the file from."""
        ...
