"""Opens the queue, the key store and the image store named by the settings' URLs.

Only the chosen backend is imported, so an API replica never loads a driver it does not use.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from sdapi.auth.keys import KeyStore
from sdapi.errors import ConfigurationError
from sdapi.queue.base import JobQueue
from sdapi.settings import Settings
from sdapi.storage.base import ImageStore

SUPPORTED_DATABASES = "sqlite:///path.db, postgresql://user:password@host:5432/dbname"
SUPPORTED_STORAGE = "a local directory, file:///path, s3://bucket[/prefix]"


@dataclass
class Backends:
    queue: JobQueue
    keys: KeyStore
    images: ImageStore

    def close(self) -> None:
        self.queue.close()


def redact(url: str) -> str:
    """The URL with any password replaced, fit for an error message or a log line."""
    return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)


def _backend(module: str, extra: str, drivers: tuple[str, ...]) -> ModuleType:
    """Import a backend module; a missing optional driver is a one-line configuration error."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in drivers:
            raise  # a bug of ours, not a missing extra
        raise ConfigurationError(
            f"{extra} support is not installed ({exc.name} is missing):"
            f" pip install 'sdapi[{extra}]'"
        ) from exc


def open_database(settings: Settings) -> tuple[JobQueue, KeyStore]:
    url = settings.database_url
    if url.startswith("sqlite:"):
        from sdapi.auth.sqlite import SQLiteKeyStore
        from sdapi.database.sqlite import SQLiteDatabase
        from sdapi.queue.sqlite import SQLiteQueue

        db = SQLiteDatabase.from_url(url)
        return SQLiteQueue(db, max_attempts=settings.max_attempts), SQLiteKeyStore(db)
    if url.startswith(("postgresql://", "postgres://")):
        drivers = ("psycopg", "psycopg_pool")
        pg = _backend("sdapi.database.postgres", "postgres", drivers).PostgresDatabase.from_url(url)
        queue = _backend("sdapi.queue.postgres", "postgres", drivers).PostgresQueue
        keys = _backend("sdapi.auth.postgres", "postgres", drivers).PostgresKeyStore
        return queue(pg, max_attempts=settings.max_attempts), keys(pg)
    raise ConfigurationError(
        f"unsupported database URL {redact(url)!r} (supported: {SUPPORTED_DATABASES})"
    )


def open_storage(settings: Settings) -> ImageStore:
    url = settings.storage_url
    if url.startswith("s3://"):
        s3 = _backend("sdapi.storage.s3", "s3", ("boto3", "botocore"))
        store: ImageStore = s3.S3Store.from_settings(settings)
        return store
    if "://" in url and not url.startswith("file://"):
        raise ConfigurationError(
            f"unsupported storage URL {redact(url)!r} (supported: {SUPPORTED_STORAGE})"
        )
    from sdapi.storage.local import LocalStore

    return LocalStore(Path(url.removeprefix("file://")))


def open_backends(settings: Settings) -> Backends:
    queue, keys = open_database(settings)
    return Backends(queue=queue, keys=keys, images=open_storage(settings))
