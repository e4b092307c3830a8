"""API keys kept in the SQLite database beside the jobs."""

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
from sdapi.database.sqlite import SQLiteDatabase


class SQLiteKeyStore:
    def __init__(self, db: SQLiteDatabase) -> None:
        self.db = db

    def create(self, name: str, limits: KeyLimits | None = None) -> tuple[ApiKey, str]:
        key, secret, digest = issue_key(name, limits)
        with self.db.write() as conn:
            conn.execute(INSERT_KEY.format(p="?"), insert_key_params(key, digest))
        return key, secret

    def verify(self, secret: str) -> ApiKey | None:
        digest = hash_key(secret)
        row = (
            self.db.connection()
            .execute("SELECT * FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (digest,))
            .fetchone()
        )
        if row is None or not same_hash(row["key_hash"], digest):
            return None
        return ApiKey.from_row(row)

    def list(self) -> list[ApiKey]:
        rows = self.db.connection().execute("SELECT * FROM api_keys ORDER BY created_at")
        return [ApiKey.from_row(row) for row in rows]

    def revoke(self, key_id_or_prefix: str) -> ApiKey | None:
        with self.db.write() as conn:
            rows = conn.execute(
                "SELECT * FROM api_keys WHERE id = ? OR key_prefix = ?",
                (key_id_or_prefix, key_id_or_prefix),
            ).fetchall()
            if len(rows) != 1:
                return None
            conn.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                (time.time(), rows[0]["id"]),
            )
            row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (rows[0]["id"],)).fetchone()
        return ApiKey.from_row(row)
