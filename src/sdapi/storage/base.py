"""The image store port.

Names are `<folder>/<file>`: `generations/<uuid>-<i>.png` for outputs, `inputs/<uuid>-init.png`
for images clients sent. Names are checked against one pattern, so a name can never walk out of
the store (no `..`, no slashes inside the file part).
"""

from __future__ import annotations

import re
from typing import Protocol

FOLDERS = ("generations", "inputs")
NAME_PATTERN = re.compile(r"^(generations|inputs)/[A-Za-z0-9][A-Za-z0-9_-]{0,127}\.png$")


def is_valid_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None


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
