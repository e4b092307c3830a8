"""API keys kept in the PostgreSQL database beside the jobs (same semantics as SQLiteKeyStore)."""

from __future__ import annotations

import time

from sdapi.auth.keys import (
    INSERT_KEY,
    ApiKey,
    KeyLimits,
    hash_key,
    insert_key_params,
    issue_key,
    same_hash,
)
from sdapi.database.postgres import PostgresDatabase


class PostgresKeyStore:
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    def create(self, name: str, limits: KeyLimits | None = None) -> tuple[ApiKey, str]:
        key, secret, digest = issue_key(name, limits)
        with self.db.connection() as conn:
            conn.execute(INSERT_KEY.format(p="%s"), insert_key_params(key, digest))
        return key, secret

    def verify(self, secret: str) -> ApiKey | None:
        digest = hash_key(secret)
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT * FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL", (digest,)
            ).fetchone()
        if row is None or not same_hash(row["key_hash"], digest):
            return None
        return ApiKey.from_row(row)

    def list(self) -> list[ApiKey]:
        with self.db.connection() as conn:
            # id breaks ties so the listing is stable even for keys created in the same instant.
            rows = conn.execute("SELECT * FROM api_keys ORDER BY created_at, id").fetchall()
        return [ApiKey.from_row(row) for row in rows]

    def revoke(self, key_id_or_prefix: str) -> ApiKey | None:
        with self.db.transaction() as conn:
            # FOR UPDATE: two operators revoking at once both see one consistent revoked_at.
            rows = conn.execute(
                "SELECT id FROM api_keys WHERE id = %s OR key_prefix = %s FOR UPDATE",
                (key_id_or_prefix, key_id_or_prefix),
            ).fetchall()
            if len(rows) != 1:
                return None
            row = conn.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE id = %s"
                " RETURNING *",
                (time.time(), rows[0]["id"]),
            ).fetchone()
        assert row is not None  # the row is locked by us: it cannot have gone
        return ApiKey.from_row(row)
