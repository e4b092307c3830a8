"""PostgreSQL: a connection pool, short explicit transactions, numbered migrations.

Pooled connections run in autocommit mode: a single statement is its own transaction, so a
read never leaves a session "idle in transaction" holding back vacuum, and every multi-statement
change is an explicit `transaction()` block that commits (or rolls back) before the connection
returns to the pool.

Opening checks the server with one direct connection first (a few seconds at most), so a wrong
host, database, user or password is reported as one `ConfigurationError` line at start instead
of a pool that keeps retrying in the background.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from sdapi.errors import ConfigurationError, DatabaseUnavailable

log = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "sdapi.database.migrations.postgres"
URL_SCHEMES = ("postgresql://", "postgres://")
#: Seconds to wait for the server to answer a new connection (libpq's minimum is 2).
CONNECT_TIMEOUT_S = 5
#: A worker holds one connection at a time (plus its heartbeat thread); an API replica runs
#: queue calls from its thread pool. Ten per process keeps many replicas and workers well under
#: PostgreSQL's default max_connections of 100.
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
#: How long a caller waits for a free (or a new) pooled connection before the call fails.
POOL_TIMEOUT_S = 10.0
#: Arbitrary constant naming the migration lock: concurrent starters apply migrations one at a
#: time. Transaction-scoped, so a crashed migrator can never leave it held.
MIGRATION_LOCK_KEY = 7_361_002_001
#: Detect a peer that vanished without closing the socket (a partition, a failover) in about a
#: minute instead of the kernel's two hours: a pooled connection's checkout check, and the
#: long-lived LISTEN connection, would otherwise wait on a dead socket.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


class PostgresDatabase:
    """A migrated PostgreSQL database behind a pool of autocommit connections."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = POOL_MIN_SIZE,
        max_size: int = POOL_MAX_SIZE,
        pool_timeout: float = POOL_TIMEOUT_S,
        migrate: bool = True,
    ) -> None:
        self.url = url
        self.conninfo = _with_defaults(url)
        self.where = describe(url)
        # Probe (and migrate) over one direct connection: its error is the precise one-line
        # reason, where a pool would only time out after retrying in the background.
        with self._connect_or_fail() as conn:
            if migrate:
                self._migrate_or_fail(conn)
        self.pool = ConnectionPool(
            self.conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=pool_timeout,
            connection_class=psycopg.Connection[DictRow],
            kwargs={"autocommit": True, "row_factory": dict_row},
            # One empty round trip per checkout: after a server restart or a failover the pool
            # hands out fresh connections instead of failing one call per dead connection.
            check=ConnectionPool.check_connection,
            name="sdapi",
            open=False,
        )
        try:
            self.pool.open(wait=True, timeout=max(pool_timeout, CONNECT_TIMEOUT_S))
        except psycopg.Error as exc:
            self.pool.close()
            raise ConfigurationError(f"cannot open PostgreSQL {self.where}: {reason(exc)}") from exc

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresDatabase:
        if not url.startswith(URL_SCHEMES):
            raise ConfigurationError(
                f"not a PostgreSQL database URL: {redact(url)!r}"
                " (want postgresql://user:password@host:5432/dbname)"
            )
        return cls(url, **options)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A pooled autocommit connection, exclusively ours until the block ends."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            # Lost connections, server shutdowns and pool timeouts are all OperationalError;
            # programming errors (bad SQL, constraint violations) are bugs and pass unchanged.
            log.warning("PostgreSQL %s unavailable: %s", self.where, reason(exc))
            raise DatabaseUnavailable() from exc

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A pooled connection inside BEGIN ... COMMIT (ROLLBACK if the block raises)."""
        with self.connection() as conn, conn.transaction():
            yield conn

    def listen_connection(self, channel: str, *, timeout: float) -> psycopg.Connection[Any]:
        """A new connection, outside the pool, that LISTENs on `channel`.

        Outside the pool because it blocks waiting for notifications and its LISTEN state must
        not leak into other callers' sessions.
        """
        conn = psycopg.connect(
            self.conninfo,
            autocommit=True,
            # libpq counts whole seconds and treats anything under 2 as 2.
            connect_timeout=max(2, min(CONNECT_TIMEOUT_S, round(timeout))),
        )
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except BaseException:
            conn.close()
            raise
        return conn

    def migrate(self) -> list[str]:
        """Apply the numbered migrations not yet applied, in order; returns their names.

        Safe to run from many processes at once: each takes the same transaction-scoped advisory
        lock first, so one applies the migrations and the others then find nothing to do.
        """
        with self.transaction() as conn:
            return _apply_migrations(conn)

    def close(self) -> None:
        self.pool.close()

    def _connect_or_fail(self) -> psycopg.Connection[dict[str, Any]]:
        try:
            return psycopg.connect(self.conninfo, autocommit=True, row_factory=dict_row)
        except psycopg.Error as exc:
            raise ConfigurationError(
                f"cannot connect to PostgreSQL {self.where}: {reason(exc)}"
            ) from exc

    def _migrate_or_fail(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        try:
            with conn.transaction():
                applied = _apply_migrations(conn)
        except psycopg.Error as exc:
            # Typically a role without CREATE rights on the schema: configuration, not a bug.
            raise ConfigurationError(
                f"cannot migrate PostgreSQL {self.where}: {reason(exc)}"
            ) from exc
        if applied:
            log.info("PostgreSQL %s: applied migrations %s", self.where, ", ".join(applied))


def _apply_migrations(conn: psycopg.Connection[dict[str, Any]]) -> list[str]:
    """Inside the caller's transaction: lock, then apply what schema_migrations lacks."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
    )
    done = {row["name"] for row in conn.execute("SELECT name FROM schema_migrations")}
    applied: list[str] = []
    for name, script in _migrations():
        if name in done:
            continue
        # No parameters: psycopg sends the script with the simple protocol, which runs several
        # statements in one call, all inside our transaction.
        conn.execute(script)
        conn.execute(
            "INSERT INTO schema_migrations VALUES (%s, extract(epoch FROM now()))", (name,)
        )
        applied.append(name)
    return applied


def _migrations() -> list[tuple[str, str]]:
    files = resources.files(MIGRATIONS_PACKAGE).iterdir()
    return sorted((f.name, f.read_text()) for f in files if f.name.endswith(".sql"))


def _with_defaults(url: str) -> str:
    """The URL plus a connect timeout, an application name and TCP keepalives, unless it sets
    its own."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ConfigurationError(f"bad PostgreSQL URL {redact(url)!r}: {reason(exc)}") from exc
    extra = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "sdapi", **KEEPALIVES}
    params = [f"{key}={value}" for key, value in extra.items() if key not in given]
    if not params:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(params)


def describe(url: str) -> str:
    """`database "db" at host:port as user`: where we connect, never the password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return redact(url)
    host = info.get("host") or "the local socket"  # libpq's default when no host is given
    text = f'database "{info.get("dbname", "?")}" at {host}:{info.get("port", 5432)}'
    return text + (f' as "{info["user"]}"' if info.get("user") else "")


def redact(url: str) -> str:
    """The URL with any password replaced by `***`, for messages and logs."""
    return re.sub(r"(://[^:/@?#]*:)[^@/?#]*@", r"\1***@", url)


#: libpq's hint lines ("\tIs the server running ...") and the prefixes it repeats per attempt.
_ATTEMPT_PREFIX = re.compile(r"^(connection failed: )?connection to server (at|on) .*? failed: ")
_SEVERITY = re.compile(r"^(FATAL|ERROR):\s+")


def reason(exc: BaseException) -> str:
    """The driver's message as one line: per-attempt prefixes and hint lines dropped."""
    parts: list[str] = []
    for line in str(exc).splitlines():
        if not line.strip() or line.startswith(("\t", "HINT:", "DETAIL:")):
            continue
        part = _SEVERITY.sub("", _ATTEMPT_PREFIX.sub("", line.strip()).strip())
        if part and part not in parts:
            parts.append(part)
    text = "; ".join(parts) or type(exc).__name__
    return text + _hint(text)


def _hint(text: str) -> str:
    lowered = text.lower()
    if "connection refused" in lowered:
        return " (is PostgreSQL running and listening on that host and port?)"
    if "timeout expired" in lowered:
        return f" (no answer within {CONNECT_TIMEOUT_S} s: check the host, port and firewall)"
    if "password authentication failed" in lowered or re.search(r"role .* does not exist", text):
        return " (check the user and password in the database URL)"
    if re.search(r"database .* does not exist", text):
        return " (create it first, e.g. `createdb`, or fix the name in the URL)"
    return ""
