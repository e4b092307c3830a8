"""The key store contract, on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sdapi.auth.keys import KEY_LENGTH, KeyLimits, KeyStore, MemoryKeyStore, hash_key
from sdapi.auth.sqlite import SQLiteKeyStore
from sdapi.database.sqlite import SQLiteDatabase


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    if request.param == "memory":
        yield MemoryKeyStore()
    elif request.param == "sqlite":
        yield SQLiteKeyStore(SQLiteDatabase(tmp_path / "k.db"))
    else:
        url = request.getfixturevalue("postgres_url")
        from sdapi.auth.postgres import PostgresKeyStore
        from sdapi.database.postgres import PostgresDatabase

        db = PostgresDatabase(url)
        yield PostgresKeyStore(db)
        db.close()


def test_created_key_verifies_and_others_do_not(store: KeyStore) -> None:
    key, secret = store.create("alice")
    assert len(secret) == KEY_LENGTH and secret.isalnum()
    assert store.verify(secret) == key
    assert store.verify(secret[:-1] + ("a" if secret[-1] != "a" else "b")) is None
    assert store.verify("") is None


def test_list_shows_prefix_not_secret(store: KeyStore) -> None:
    _, secret_a = store.create("a")
    store.create("b")
    listed = store.list()
    assert [k.name for k in listed] == ["a", "b"]
    assert listed[0].key_prefix == secret_a[:6]
    assert all(secret_a not in repr(k) for k in listed)


def test_revoke_by_id_or_prefix(store: KeyStore) -> None:
    key, secret = store.create("a")
    other, other_secret = store.create("b")
    revoked = store.revoke(key.id)
    assert revoked is not None and not revoked.active
    assert store.verify(secret) is None
    assert store.verify(other_secret) == other
    assert store.revoke(other_secret[:6]) is not None
    assert store.verify(other_secret) is None
    assert store.revoke("nope") is None


def test_sqlite_stores_only_the_hash(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "k.db")
    _, secret = SQLiteKeyStore(db).create("a")
    raw = (tmp_path / "k.db").read_bytes() + (tmp_path / "k.db-wal").read_bytes()
    assert secret.encode() not in raw
    assert hash_key(secret).encode() in raw


def test_a_key_keeps_its_own_limits(store: KeyStore) -> None:
    _, plain_secret = store.create("plain")
    capped, capped_secret = store.create("capped", KeyLimits(max_queued=3, rate_per_minute=12.5))
    assert store.verify(plain_secret).limits == KeyLimits()  # type: ignore[union-attr]
    assert store.verify(capped_secret).limits == KeyLimits(3, 12.5)  # type: ignore[union-attr]
    assert {k.id: k.limits for k in store.list()}[capped.id] == KeyLimits(3, 12.5)
