"""Images in a local directory, served by the API itself at `<public url>/<name>`."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from sdapi.errors import ConfigurationError, StorageError
from sdapi.storage.base import FOLDERS, is_valid_name

#: A temporary file this old is no write in progress (a put takes milliseconds) but the leftover
#: of a process killed mid-write: removed when a store opens.
STALE_PART_S = 600.0


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            for folder in FOLDERS:
                (root / folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot create image directory {root}: {exc}") from exc
        self._remove_stale_parts()

    def _remove_stale_parts(self) -> None:
        cutoff = time.time() - STALE_PART_S
        for folder in FOLDERS:
            for part in (self.root / folder).glob(".tmp-*.part"):
                with contextlib.suppress(OSError):  # gone already, or not ours to remove
                    if part.stat().st_mtime < cutoff:
                        part.unlink()

    def _path(self, name: str) -> Path:
        if not is_valid_name(name):
            raise StorageError(detail=f"invalid image name {name!r}")
        return self.root / name

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            # Write beside the target and rename: a crash never leaves a half-written image.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(detail=f"cannot write {name}: {exc.strerror or exc}") from exc

    def get(self, name: str) -> bytes | None:
        if not is_valid_name(name):
            return None
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(detail=f"cannot read {name}: {exc.strerror or exc}") from exc

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def url(self, name: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{name}"
