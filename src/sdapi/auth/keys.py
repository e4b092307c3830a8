"""API keys: generation, hashing, and the `KeyStore` port with its memory backend.

Keys are 48 random alphanumeric characters (form- and header-safe). Only their SHA-256 is
stored: a key has 285 bits of entropy, so a fast hash is as safe as a slow one and keeps every
request's lookup cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

KEY_ALPHABET = string.ascii_letters + string.digits
KEY_LENGTH = 48
#: Characters of the key kept in clear so an operator can tell keys apart in `keys list`.
PREFIX_LENGTH = 6


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's own limits; None leaves the server's setting in charge."""

    #: Jobs queued or running at once.
    max_queued: int | None = None
    #: Generation requests per minute.
    rate_per_minute: float | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    key_prefix: str
    created_at: float
    revoked_at: float | None = None
    limits: KeyLimits = KeyLimits()

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        """From a database row (sqlite3.Row or a dict row): values by column name."""
        limits = KeyLimits(row["max_queued"], row["rate_per_minute"])
        return cls(
            row["id"], row["name"], row["key_prefix"], row["created_at"], row["revoked_at"], limits
        )


def generate_key() -> str:
    return "".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_LENGTH))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def issue_key(name: str, limits: KeyLimits | None = None) -> tuple[ApiKey, str, str]:
    """A new key: its record, its secret (shown once) and the hash a store keeps."""
    secret = generate_key()
    key = ApiKey(
        new_key_id(), name, secret[:PREFIX_LENGTH], time.time(), None, limits or KeyLimits()
    )
    return key, secret, hash_key(secret)


#: The INSERT of a new key, in a dialect's placeholder `{p}`; values from `insert_key_params`.
INSERT_KEY = (
    "INSERT INTO api_keys (id, name, key_hash, key_prefix, created_at, max_queued,"
    " rate_per_minute) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})"
)


def insert_key_params(key: ApiKey, digest: str) -> tuple[Any, ...]:
    return (
        key.id, key.name, digest, key.key_prefix, key.created_at, key.limits.max_queued,
        key.limits.rate_per_minute,
    )  # fmt: skip


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class KeyStore(Protocol):
    def create(self, name: str, limits: KeyLimits | None = None) -> tuple[ApiKey, str]:
        """Store a new key; returns it with the secret, which is never retrievable again."""
        ...

    def verify(self, secret: str) -> ApiKey | None:
        """The active key with this secret, or None (unknown or revoked)."""
        ...

    def list(self) -> list[ApiKey]: ...

    def revoke(self, key_id_or_prefix: str) -> ApiKey | None:
        """Revoke by id (or by the unique key prefix); None when nothing matched."""
        ...


class MemoryKeyStore:
    def __init__(self) -> None:
        self._keys: dict[str, tuple[ApiKey, str]] = {}
        self._lock = threading.Lock()

    def create(self, name: str, limits: KeyLimits | None = None) -> tuple[ApiKey, str]:
        key, secret, digest = issue_key(name, limits)
        with self._lock:
            self._keys[key.id] = (key, digest)
        return key, secret

    def verify(self, secret: str) -> ApiKey | None:
        digest = hash_key(secret)
        for key, stored in self._keys.values():
            if same_hash(stored, digest) and key.active:
                return key
        return None

    def list(self) -> list[ApiKey]:
        return sorted((k for k, _ in self._keys.values()), key=lambda k: k.created_at)

    def revoke(self, key_id_or_prefix: str) -> ApiKey | None:
        with self._lock:
            matches = [
                (k, h) for k, h in self._keys.values() if key_id_or_prefix in (k.id, k.key_prefix)
            ]
            if len(matches) != 1:
                return None
            key, digest = matches[0]
            revoked = replace(key, revoked_at=key.revoked_at or time.time())
            self._keys[key.id] = (revoked, digest)
        return revoked
