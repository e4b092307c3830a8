"""A real PostgreSQL server: migrations, durability, NOTIFY wake-ups, claims from many machines,
outages, and one-line errors for bad configuration.

Every test gets a fresh database of its own (the `postgres_url` fixture in tests/conftest.py);
without a server they skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg: pip install '.[postgres]'")

import psycopg

from sdapi.auth.keys import hash_key
from sdapi.auth.postgres import PostgresKeyStore
from sdapi.backends import open_database
from sdapi.catalog.work import batch_key
from sdapi.database.postgres import MIGRATIONS_PACKAGE, PostgresDatabase
from sdapi.errors import ConfigurationError, DatabaseUnavailable
from sdapi.jobs import Echo, Job, JobStatus
from sdapi.queue.base import NewJob
from sdapi.queue.postgres import PostgresQueue
from sdapi.settings import Settings
from tests.helpers import make_request

LEASE = 30.0
#: Every migration, in order: a fresh database gets them all.
MIGRATIONS = sorted(
    f.name for f in resources.files(MIGRATIONS_PACKAGE).iterdir() if f.name.endswith(".sql")
)


@pytest.fixture
def open_queue(postgres_url: str) -> Iterator[Callable[..., PostgresQueue]]:
    """Opens queues on the test's database, each with its own pool (like separate machines)."""
    opened: list[PostgresQueue] = []

    def make(**options: Any) -> PostgresQueue:
        queue = PostgresQueue(PostgresDatabase(postgres_url, **options))
        opened.append(queue)
        return queue

    yield make
    for queue in opened:
        queue.close()


def submit(queue: PostgresQueue, **changes: object) -> Job:
    return queue.enqueue(NewJob("key_a", make_request(**changes), ("generations/a-0.png",)))


def admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True)


def db_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


# Migrations -------------------------------------------------------------------------------------


def test_migrations_apply_once_and_are_recorded(postgres_url: str) -> None:
    db = PostgresDatabase(postgres_url)  # applies them
    try:
        assert db.migrate() == []
    finally:
        db.close()
    with admin(postgres_url) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations")]
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
    assert names == MIGRATIONS
    assert tables == {
        "schema_migrations", "api_keys", "jobs", "workers", "timings", "costs", "webhook_events",
        "metrics",
    }  # fmt: skip


def test_concurrent_starters_apply_migrations_exactly_once(postgres_url: str) -> None:
    starters = [PostgresDatabase(postgres_url, migrate=False, max_size=1) for _ in range(6)]
    barrier = threading.Barrier(len(starters))
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def start(db: PostgresDatabase) -> None:
        barrier.wait()
        try:
            results.append(db.migrate())
        except BaseException as exc:  # collected: an assertion in a thread would be lost
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(db,)) for db in starters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for db in starters:
        db.close()
    assert errors == []
    assert sorted(results) == [[]] * 5 + [MIGRATIONS]
    with admin(postgres_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone() == (
            len(MIGRATIONS),
        )


def test_sdapi_migrate_from_several_processes_at_once(postgres_url: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sdapi", "migrate", "--database", postgres_url]
    procs = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outcomes = [(p.wait(60), *(s.decode() for s in p.communicate())) for p in procs]
    assert [(rc, out.strip()) for rc, out, _ in outcomes] == [(0, "database is up to date")] * 3
    with admin(postgres_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone() == (
            len(MIGRATIONS),
        )


# Durability and ids -----------------------------------------------------------------------------


def test_ids_are_integers_that_grow_and_are_never_reused(
    open_queue: Callable[..., PostgresQueue], postgres_url: str
) -> None:
    queue = open_queue()
    ids = [submit(queue).id for _ in range(3)]
    assert all(type(i) is int for i in ids) and ids == sorted(set(ids))
    with admin(postgres_url) as conn:
        conn.execute("DELETE FROM jobs")
    assert submit(queue).id > ids[-1]


def test_jobs_survive_closing_and_reopening(postgres_url: str) -> None:
    queue = PostgresQueue(PostgresDatabase(postgres_url))
    job = submit(queue, samples=2)
    [claimed] = queue.claim("w", lease_s=LEASE)
    queue.close()
    reopened = PostgresQueue(PostgresDatabase(postgres_url))
    try:
        again = reopened.get(job.id)
        assert again is not None and again.status is JobStatus.PROCESSING
        assert again.lease_id == claimed.lease_id and again.request == job.request
        assert again.created_at == job.created_at and again.echo == Echo()
    finally:
        reopened.close()


# LISTEN / NOTIFY --------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def assert_woken_by_enqueue(worker: PostgresQueue, api: PostgresQueue) -> None:
    """A wait_for_work(5) blocked in a thread returns right after another pool enqueues."""
    elapsed: list[float] = []
    waiter = threading.Thread(target=lambda: elapsed.append(timed(lambda: worker.wait_for_work(5))))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive(), "wait_for_work returned before anything was enqueued"
    job = submit(api)
    waiter.join(5)
    assert elapsed and 0.25 < elapsed[0] < 2.0, elapsed
    assert [j.id for j in worker.claim("w", lease_s=LEASE)] == [job.id]


def test_notify_wakes_a_waiting_worker_at_once(open_queue: Callable[..., PostgresQueue]) -> None:
    worker, api = open_queue(), open_queue()
    # The first call starts listening and returns at once, so the worker looks at the queue
    # again: a job enqueued before LISTEN took effect sent no notification.
    assert timed(lambda: worker.wait_for_work(5)) < 2.0
    assert_woken_by_enqueue(worker, api)


def test_wait_for_work_waits_out_its_timeout_when_nothing_arrives(
    open_queue: Callable[..., PostgresQueue],
) -> None:
    worker = open_queue()
    worker.wait_for_work(5)  # starts listening
    assert 0.45 < timed(lambda: worker.wait_for_work(0.5)) < 2.0


def test_requeued_expired_lease_wakes_waiting_workers(
    open_queue: Callable[..., PostgresQueue], postgres_url: str
) -> None:
    clock = [1000.0]
    api = open_queue()
    reaper = PostgresQueue(PostgresDatabase(postgres_url), clock=lambda: clock[0])
    idle = open_queue()
    try:
        submit(api, model="other-model")
        assert reaper.claim("w1", lease_s=LEASE)
        idle.wait_for_work(5)  # starts listening
        clock[0] += LEASE + 1
        waiter = threading.Thread(target=lambda: idle.wait_for_work(5))
        waiter.start()
        time.sleep(0.2)
        # Reaping happens inside a claim, here one for a model it does not take: the expired
        # job goes back in line and the idle worker hears about it.
        assert reaper.claim("w2", lease_s=LEASE, models=["sdapi-tiny"]) == []
        waiter.join(2.0)
        assert not waiter.is_alive()
    finally:
        reaper.close()


def test_wait_for_work_survives_a_dropped_listen_connection(
    open_queue: Callable[..., PostgresQueue], postgres_url: str
) -> None:
    worker, api = open_queue(), open_queue()
    worker.wait_for_work(5)  # starts listening
    with admin(postgres_url) as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        ).fetchall()
    assert killed == [(True,)]
    # The broken connection is noticed and dropped without raising; the wait becomes a sleep.
    assert 0.45 < timed(lambda: worker.wait_for_work(0.5)) < 2.0
    assert timed(lambda: worker.wait_for_work(5)) < 2.0  # listens again, returns to look
    assert_woken_by_enqueue(worker, api)


# Claims -----------------------------------------------------------------------------------------


def test_claimers_on_separate_machines_take_each_job_exactly_once(
    open_queue: Callable[..., PostgresQueue], postgres_url: str
) -> None:
    api = open_queue()
    ids = {submit(api, width=64 if i % 3 else 128).id for i in range(90)}
    machines = [open_queue(max_size=2) for _ in range(6)]
    barrier = threading.Barrier(len(machines))
    batches: list[tuple[str, list[Job]]] = []
    lock = threading.Lock()

    def claimer(name: str, queue: PostgresQueue) -> None:
        barrier.wait()
        while jobs := queue.claim(name, lease_s=LEASE, images=3):
            with lock:
                batches.append((name, jobs))

    threads = [threading.Thread(target=claimer, args=(f"m{i}", q)) for i, q in enumerate(machines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [job.id for _, jobs in batches for job in jobs]
    assert sorted(claimed) == sorted(ids)  # every job, none twice
    assert len({name for name, _ in batches}) > 1  # the claims really did run side by side
    for name, jobs in batches:
        assert len({batch_key(j.request) for j in jobs}) == 1
        assert len({j.lease_id for j in jobs}) == 1
        assert all(j.worker_id == name and j.attempts == 1 for j in jobs)
    with admin(postgres_url) as conn:
        rows = conn.execute("SELECT status, attempts, COUNT(*) FROM jobs GROUP BY 1, 2").fetchall()
    assert rows == [("processing", 1, 90)]


def test_a_claim_passes_over_a_job_another_claimer_holds(
    open_queue: Callable[..., PostgresQueue], postgres_url: str
) -> None:
    queue = open_queue()
    first, second = submit(queue), submit(queue)
    result: list[list[Job]] = []
    with admin(postgres_url) as holder, holder.transaction():
        # Another claimer, mid-transaction, holding the oldest job's row.
        holder.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (first.id,))
        claimer = threading.Thread(target=lambda: result.append(queue.claim("w", lease_s=LEASE)))
        claimer.start()
        claimer.join(5)
        assert not claimer.is_alive(), "claim blocked on a row another claimer holds"
    assert [[j.id for j in jobs] for jobs in result] == [[second.id]]
    assert [j.id for j in queue.claim("w", lease_s=LEASE)] == [first.id]


# Wiring, keys, outages --------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_database_picks_postgres_by_url(postgres_url: str, scheme: str) -> None:
    url = scheme + postgres_url.removeprefix("postgresql")
    queue, keys = open_database(Settings(database=url, max_attempts=5))
    try:
        assert isinstance(queue, PostgresQueue) and isinstance(keys, PostgresKeyStore)
        assert queue.max_attempts == 5
        key, secret = keys.create("a")
        assert keys.verify(secret) == key
    finally:
        queue.close()


def test_keys_are_stored_only_as_hashes(postgres_url: str) -> None:
    db = PostgresDatabase(postgres_url)
    try:
        _, secret = PostgresKeyStore(db).create("a")
    finally:
        db.close()
    with admin(postgres_url) as conn:
        [row] = conn.execute("SELECT * FROM api_keys").fetchall()
    assert hash_key(secret) in row and all(secret not in str(value) for value in row)


def test_an_outage_surfaces_to_callers_and_the_pool_recovers(
    open_queue: Callable[..., PostgresQueue], postgres_url: str, postgres_server: str
) -> None:
    queue = open_queue(pool_timeout=1.0)
    job = submit(queue)
    queue.wait_for_work(5)  # starts listening
    name = db_name(postgres_url)
    with admin(postgres_server) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        try:
            with pytest.raises(DatabaseUnavailable) as info:
                queue.get(job.id)
            assert isinstance(info.value.__cause__, psycopg.OperationalError)
            with pytest.raises(DatabaseUnavailable):
                queue.claim("w", lease_s=LEASE)
            queue.wait_for_work(0.3)  # an idle worker is not the one to crash on it
        finally:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    deadline = time.monotonic() + 15
    while True:
        try:
            assert queue.get(job.id) == job
            break
        except DatabaseUnavailable:
            assert time.monotonic() < deadline, "the pool did not reconnect"
            time.sleep(0.1)


# Bad configuration ------------------------------------------------------------------------------


def _with(server: str, *, netloc: str | None = None, db: str | None = None) -> str:
    parts = urlsplit(server)
    return parts._replace(
        netloc=netloc or parts.netloc, path=f"/{db}" if db else parts.path
    ).geturl()


BAD_CONFIGS = {
    "unreachable port": (lambda s: "postgresql://postgres@127.0.0.1:1/postgres", "refused"),
    "unknown database": (
        lambda s: _with(s, db="sdapi_no_such_db"),
        'database "sdapi_no_such_db" does not exist',
    ),
    "unknown role": (
        lambda s: _with(
            s, netloc=f"sdapi_no_such_role:s3cret-pw@{urlsplit(s).hostname}:{urlsplit(s).port}"
        ),
        'role "sdapi_no_such_role" does not exist',
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_configuration_is_one_clear_line(postgres_server: str, case: str) -> None:
    make_url, expected = BAD_CONFIGS[case]
    url = make_url(postgres_server)
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        PostgresDatabase.from_url(url)
    message = str(info.value)
    assert time.monotonic() - started < 5
    assert expected in message and message.startswith("cannot connect to PostgreSQL")
    assert "\n" not in message and "Traceback" not in message and "s3cret" not in message


def test_cli_reports_an_unreachable_database_in_one_line(tmp_path: Path) -> None:
    url = "postgresql://postgres:s3cret@127.0.0.1:1/sdapi"
    env = {**os.environ, "SDAPI_DATABASE": url}
    done = subprocess.run(
        [sys.executable, "-m", "sdapi", "migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdapi: cannot connect to PostgreSQL"), lines
    assert "refused" in lines[0] and "s3cret" not in done.stderr


def test_from_url_rejects_other_schemes() -> None:
    with pytest.raises(ConfigurationError, match="not a PostgreSQL database URL"):
        PostgresDatabase.from_url("mysql://u:p@h/db")
