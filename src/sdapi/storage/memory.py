"""Images in a dict, for unit tests."""

from __future__ import annotations

from sdapi.errors import StorageError
from sdapi.storage.base import is_valid_name


class MemoryStore:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def put(self, name: str, data: bytes) -> None:
        if not is_valid_name(name):
            raise StorageError(detail=f"invalid image name {name!r}")
        self.files[name] = data

    def get(self, name: str) -> bytes | None:
        return self.files.get(name)

    def delete(self, name: str) -> None:
        self.files.pop(name, None)

    def url(self, name: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{name}"
