"""Opens the queue, the key store and the image store named by the settings' URLs.

Only the chosen backend is imported, so an API replica never loads a driver it does not use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdapi.auth.keys import KeyStore
from sdapi.errors import ConfigurationError
from sdapi.queue.base import JobQueue
from sdapi.settings import Settings
from sdapi.storage.base import ImageStore


@dataclass
class Backends:
    queue: JobQueue
    keys: KeyStore
    images: ImageStore

    def close(self) -> None:
        self.queue.close()


def open_database(settings: Settings) -> tuple[JobQueue, KeyStore]:
    url = settings.database_url
    if url.startswith("sqlite:"):
        from sdapi.auth.sqlite import SQLiteKeyStore
        from sdapi.database.sqlite import SQLiteDatabase
        from sdapi.queue.sqlite import SQLiteQueue

        db = SQLiteDatabase.from_url(url)
        return SQLiteQueue(db, max_attempts=settings.max_attempts), SQLiteKeyStore(db)
    raise ConfigurationError(f"unsupported database URL {url!r} (supported: sqlite:///path.db)")


def open_storage(settings: Settings) -> ImageStore:
    url = settings.storage_url
    if "://" in url and not url.startswith("file://"):
        raise ConfigurationError(f"unsupported storage URL {url!r} (supported: a local directory)")
    from sdapi.storage.local import LocalStore

    return LocalStore(Path(url.removeprefix("file://")))


def open_backends(settings: Settings) -> Backends:
    queue, keys = open_database(settings)
    return Backends(queue=queue, keys=keys, images=open_storage(settings))
