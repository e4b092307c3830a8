"""Reading a deployment's database directly, whichever backend it is on."""

from __future__ import annotations

import sqlite3
from typing import Any

from sdapi.database.sqlite import path_from_url


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of `sql` (with `?` placeholders) on a sqlite:/// or postgresql:// database."""
    if url.startswith("sqlite:"):
        with sqlite3.connect(path_from_url(url)) as db:
            return db.execute(sql, params).fetchall()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql.replace("?", "%s"), params).fetchall()
