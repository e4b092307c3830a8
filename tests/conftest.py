"""Fixtures shared by every tier."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.helpers import FakeClock

# Quiet the model stack in every test process (and the servers tests start inherit it).
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


#: The PostgreSQL server the tests make their throwaway databases on (through any database on
#: it: `postgres` is there on every server). CI provides one at this address.
POSTGRES_ENV = "SDAPI_TEST_POSTGRES"
DEFAULT_TEST_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _postgres_unavailable(server: str, why: str) -> None:
    """Skip, or fail under CI=true, where PostgreSQL tests must run (DESIGN.md section 8)."""
    parts = urlsplit(server)
    message = f"PostgreSQL not reachable at {parts.hostname}:{parts.port or 5432}: {why}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: the PostgreSQL tests must run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The maintenance URL of a reachable server, probed once per session."""
    server = os.environ.get(POSTGRES_ENV) or DEFAULT_TEST_POSTGRES
    try:
        import psycopg
    except ModuleNotFoundError:
        _postgres_unavailable(server, "psycopg is not installed (pip install 'sdapi[postgres]')")
    try:
        with psycopg.connect(server, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        _postgres_unavailable(server, " ".join(str(exc).split()))
    return server


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A URL to a fresh, empty database of the test's own, dropped (connections and all) after."""
    import psycopg
    from psycopg import sql

    name = f"sdapi_t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(postgres_server)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            # FORCE: a pool or LISTEN connection the test leaked must not keep the database.
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            admin.execute(drop.format(sql.Identifier(name)))
