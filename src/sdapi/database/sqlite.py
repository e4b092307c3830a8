"""SQLite: one file, WAL, one connection per thread, writes under BEGIN IMMEDIATE.

WAL lets the API read while a worker writes; BEGIN IMMEDIATE takes the write lock up front so
two claimers never both read the same queued row; busy_timeout makes a writer wait its turn
instead of failing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from sdapi.errors import ConfigurationError, DatabaseUnavailable

BUSY_TIMEOUT_MS = 10_000
MIGRATIONS_PACKAGE = "sdapi.database.migrations.sqlite"


def path_from_url(url: str) -> Path:
    """`sqlite:///relative.db` or `sqlite:////absolute.db` (SQLAlchemy's spelling) to a path."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigurationError(f"not a SQLite database URL: {url!r} (want sqlite:///path/to.db)")
    return Path(url[len(prefix) :])


class SQLiteDatabase:
    """A SQLite file with its schema migrated; hands each thread its own connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.migrate()
        except (OSError, sqlite3.Error, DatabaseUnavailable) as exc:
            raise ConfigurationError(f"cannot open SQLite database {path}: {exc}") from exc

    @classmethod
    def from_url(cls, url: str) -> SQLiteDatabase:
        return cls(path_from_url(url))

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with _unavailable_when_transient():
                conn = sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    timeout=BUSY_TIMEOUT_MS / 1000,
                    factory=_Connection,
                )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a job the API has acknowledged survives power loss, not only a crash.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the database's write lock from its first statement.

        A full disk, an I/O error or a lock held past the busy timeout is DatabaseUnavailable:
        the API answers it as a clear 503-style error and workers wait it out, as for a
        PostgreSQL outage; nothing half-written stays (the transaction rolls back).
        """
        conn = self.connection()  # its statements report those errors (see _Connection)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def migrate(self) -> list[str]:
        """Apply the numbered migrations not yet applied, in order; returns their names."""
        applied: list[str] = []
        with self.write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            for name, sql in _migrations():
                if name in done:
                    continue
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, strftime('%s','now'))", (name,)
                )
                applied.append(name)
        return applied

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class _Connection(sqlite3.Connection):
    """Every statement, reads included (a WAL read may need to write its index), reports a
    full disk, an I/O error or a lock past the busy timeout as DatabaseUnavailable."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        with _unavailable_when_transient():
            return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        with _unavailable_when_transient():
            return super().executemany(sql, parameters)


#: SQLite's primary result codes for conditions that pass: busy or locked past the timeout,
#: disk I/O errors, a full disk, a read-only file (a remount), a file that cannot be opened.
_TRANSIENT = frozenset({5, 6, 8, 10, 13, 14})


@contextmanager
def _unavailable_when_transient() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None or code & 0xFF not in _TRANSIENT:
            raise
        raise DatabaseUnavailable(detail=f"SQLite: {exc}") from exc


def _migrations() -> list[tuple[str, str]]:
    files = resources.files(MIGRATIONS_PACKAGE).iterdir()
    scripts = [(f.name, f.read_text()) for f in files if f.name.endswith(".sql")]
    return sorted(scripts)


def _statements(sql: str) -> list[str]:
    # executescript() would commit our transaction; split instead (no ';' inside our statements).
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
