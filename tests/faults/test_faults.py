"""Faults under load (quick CI versions): workers killed at random, PostgreSQL stopped and
started, the image directory read-only, the disk full. Each runs while clients submit and fetch
(tests/load/driver.py); afterwards every accepted job has ended in exactly one honest final
state, nothing is lost, duplicated or left half-written, and the same server, never restarted,
runs new jobs.

How the faults are made here, where the tests run as root:
- a read-only image directory: `chmod 0o500` does not stop root, so the directory is a small
  tmpfs the test mounts and remounts `ro` (EROFS on every write) and back `rw`;
- a full disk: the same tmpfs, filled with a ballast file until ENOSPC, which is then deleted;
- a database outage: `pg_ctlcluster ... main stop`, 12 s (past the API pool's 10 s wait),
  `start` (always, in a finally), waiting until the server accepts connections again.
Mounting needs root (CAP_SYS_ADMIN) and the outage needs the local cluster's pg_ctlcluster:
without them these tests skip with the reason, except under CI=true, where they must run.

Two server bugs were found here and fixed: a full disk under the SQLite database answered HTTP
500 (now the database-unavailable error, and workers wait it out), and a write cut short by
SIGKILL left its temporary file for good (stale ones are now removed when a store opens).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.db import query
from tests.load.driver import (
    BackgroundLoad,
    Deployment,
    LoadConfig,
    LoadResult,
    Plan,
    Verdict,
    child_pids,
    deploy,
    output_names,
    report,
    run_load,
    verify,
    wire_state,
)

pytestmark = pytest.mark.e2e

#: Clients keep submitting for several seconds, so every fault lands on a busy server.
PACED = LoadConfig(clients=6, jobs=60, size=64, steps=4, pace_s=0.6, timeout_s=100)
RECOVERY = LoadConfig(clients=2, jobs=8, size=64, steps=1, timeout_s=60)
LEASE_S = 2.0
#: Seconds PostgreSQL is down: past the API pool's 10 s wait, so requests must answer.
OUTAGE_S = 12.0


def unavailable(reason: str) -> None:
    """Skip, or fail under CI=true, where the fault tests must run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the fault tests must run)", pytrace=False)
    pytest.skip(reason)


def recovers(deployment: Deployment) -> None:
    """The same server, never restarted, runs new jobs to success."""
    result = run_load(deployment.url, Plan(deployment.keys, RECOVERY.jobs), RECOVERY)
    verdict = verify(result, deployment.database_url)
    assert verdict.statuses == {"success": RECOVERY.jobs}, report(verdict)
    assert verdict.clean, report(verdict)


def check_outputs(deployment: Deployment, result: LoadResult) -> list[str]:
    """Succeeded jobs have their images and ended ones none; returns the temporary files left
    behind (a write cut short)."""
    present = {path.name for path in deployment.outputs()}
    partial = sorted(name for name in present if name.startswith(".tmp-"))
    promised: set[str] = set()
    for sub in result.plan.submissions:
        if sub.final is not None and wire_state(sub.final) == "success":
            promised |= set(output_names(sub))
        elif sub.final is not None:
            assert not set(output_names(sub)) & present, f"job {sub.job_id} failed with images"
    assert promised <= present, f"images missing: {sorted(promised - present)[:5]}"
    return partial


def failed_with(verdict: Verdict, result: LoadResult, text: str) -> int:
    """How many jobs failed; each must say why in `text` terms."""
    ended = [sub.final for sub in result.plan.submissions if sub.final is not None]
    errors = [str(answer.get("error", "")) for answer in ended if wire_state(answer) == "failed"]
    for error in errors:
        assert text in error, f"unclear failure {error!r}\n{report(verdict)}"
    return len(errors)


# (i) Workers killed at random -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: the embedded SQLite file in the data directory."""
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None


def test_workers_killed_at_random_lose_nothing(database_url: str | None, tmp_path: Path) -> None:
    args = ("--lease-seconds", str(LEASE_S), "--max-attempts", "10")
    deployment = deploy(tmp_path / "server", database_url=database_url, workers=2, args=args)
    rng = random.Random(os.getpid())
    killed: list[int] = []
    try:
        with BackgroundLoad(deployment.url, Plan(deployment.keys, PACED.jobs), PACED) as load:
            load.wait_accepted(6)
            for _ in range(3):
                time.sleep(rng.uniform(1.0, 2.5))
                killed += kill_a_worker(deployment, rng)
            result = load.join(PACED.timeout_s + 30)
        recovers(deployment)
        # A worker killed between creating its temporary file and renaming it leaves the file
        # (see test_partial_file_of_a_killed_write_is_removed): reported here, not failed on,
        # since whether a kill lands in that window is chance.
        partial = check_outputs(deployment, result)
    finally:
        deployment.server.stop()
    verdict = verify(result, deployment.database_url, deployment.log())
    runs = attempts(deployment, result.plan)
    print(f"killed workers {killed}, {runs} runs for {PACED.jobs} jobs, left {partial}")
    print(report(verdict))

    assert len(killed) == 3
    assert runs > PACED.jobs, "no kill met a job in hand"
    assert verdict.statuses == {"success": PACED.jobs}, report(verdict)
    assert verdict.clean and verdict.failed_requests == 0, report(verdict)


def kill_a_worker(deployment: Deployment, rng: random.Random) -> list[int]:
    """SIGKILL a live worker of the server, one holding a job when one does within 2 s (the
    supervisor restarts it a second later)."""
    assert deployment.server.proc is not None
    deadline = time.monotonic() + 30
    while not (workers := child_pids(deployment.server.proc.pid)):
        assert time.monotonic() < deadline, "no worker came back"
        time.sleep(0.1)
    busy: list[int] = []
    until = time.monotonic() + 2
    while not busy and time.monotonic() < until:
        rows = query(
            deployment.database_url,
            "SELECT w.pid FROM jobs j JOIN workers w ON w.id = j.worker_id"
            " WHERE j.status = 'processing'",
        )
        busy = [pid for (pid,) in rows if pid in workers]
    pid = rng.choice(busy or workers)
    os.kill(pid, signal.SIGKILL)
    return [pid]


def attempts(deployment: Deployment, plan: Plan) -> int:
    rows = query(
        deployment.database_url,
        "SELECT SUM(attempts) FROM jobs WHERE track_id LIKE ?",
        plan.tag + "-%",
    )
    return int(rows[0][0])


# (ii) PostgreSQL stopped and started -------------------------------------------------------------


def cluster() -> tuple[str, str] | None:
    """(version, name) of the local cluster pg_ctlcluster drives, if there is one."""
    root = Path("/etc/postgresql")
    if not shutil.which("pg_ctlcluster") or not root.is_dir():
        return None
    versions = sorted(p.name for p in root.iterdir() if (p / "main").is_dir())
    return (versions[-1], "main") if versions else None


def pg_ctl(where: tuple[str, str], action: str) -> None:
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", *where, action]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"


def wait_accepting(url: str, timeout: float = 60.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, "PostgreSQL did not come back"
            time.sleep(0.2)


def postgres_outage(where: tuple[str, str], url: str, seconds: float) -> None:
    """PostgreSQL down for `seconds`; started again whatever happens."""
    pg_ctl(where, "stop")
    try:
        time.sleep(seconds)
    finally:
        pg_ctl(where, "start")
        wait_accepting(url)


def test_postgres_restart_under_load(postgres_url: str, tmp_path: Path) -> None:
    where = cluster()
    if where is None:
        unavailable("pg_ctlcluster or /etc/postgresql/<version>/main is not here")
        return
    args = ("--lease-seconds", str(LEASE_S), "--max-attempts", "10")
    deployment = deploy(tmp_path / "server", database_url=postgres_url, args=args)
    try:
        with BackgroundLoad(deployment.url, Plan(deployment.keys, PACED.jobs), PACED) as load:
            load.wait_accepted(12)
            # Longer than the pool's 10 s wait for a connection: requests then answer an error.
            postgres_outage(where, postgres_url, seconds=OUTAGE_S)
            result = load.join(PACED.timeout_s + 30)
        recovers(deployment)
    finally:
        deployment.server.stop()
    verdict = verify(result, deployment.database_url, deployment.log())
    print(report(verdict))

    # The outage was seen, and answered as what it is: never a crash.
    assert result.stats.count("db_unavailable") > 0, report(verdict)
    assert verdict.http_5xx == 0 and set(verdict.errors) <= {"db_unavailable"}, report(verdict)
    # Workers rode it out: every job was accepted once and ended once, in success.
    assert verdict.submitted == PACED.jobs, report(verdict)
    assert verdict.statuses == {"success": PACED.jobs}, report(verdict)
    assert verdict.clean, report(verdict)


# (iii) image directory read-only, (iv) disk full ------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (root only), unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if os.path.ismount(path):  # a file still open (the test's own handle on the log)
            subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    """`ro` or `rw`; a file open for writing makes `ro` busy for a moment, so retry."""
    deadline = time.monotonic() + 10
    while True:
        done = subprocess.run(
            ["mount", "-o", f"remount,{mode}", str(path)], capture_output=True, text=True
        )
        if done.returncode == 0:
            return
        assert time.monotonic() < deadline, f"remount {mode}: {done.stderr}"
        time.sleep(0.05)


def fill(path: Path) -> Path:
    """Write a ballast file until the filesystem is full (ENOSPC)."""
    ballast = path / "ballast"
    chunk = b"\0" * 65536
    with ballast.open("wb") as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return ballast


def storage_fault(
    tmp_path: Path, break_it: Callable[[Path], None], repair: Callable[[Path], None], error: str
) -> None:
    """Run the paced load, break the image directory for a few seconds mid-load, repair it."""
    images = tmp_path / "images"
    with tmpfs(images, "32m"):
        deployment = deploy(tmp_path / "server", storage=images)
        try:
            result = load_through(deployment, lambda: break_it(images), lambda: repair(images))
            recovers(deployment)
            partial = check_outputs(deployment, result)
        finally:
            deployment.server.stop()
    verdict = verify(result, deployment.database_url, deployment.log())
    print(report(verdict))

    assert not partial, f"half-written files left behind: {partial}"
    assert verdict.submitted == PACED.jobs and verdict.clean, report(verdict)
    assert set(verdict.statuses) <= {"success", "failed"}, report(verdict)
    assert verdict.failed_requests == 0, report(verdict)
    # The jobs that met the fault failed, each saying why; the others succeeded.
    assert failed_with(verdict, result, error) >= 1, report(verdict)
    assert verdict.statuses["success"] >= 1, report(verdict)


def load_through(
    deployment: Deployment, break_it: Callable[[], object], repair: Callable[[], object]
) -> LoadResult:
    """The paced load, with the fault on for a few seconds in its middle."""
    with BackgroundLoad(deployment.url, Plan(deployment.keys, PACED.jobs), PACED) as load:
        load.wait_accepted(12)
        break_it()
        try:
            time.sleep(3)
        finally:
            repair()
        return load.join(PACED.timeout_s + 30)


def test_image_directory_read_only_for_a_while(tmp_path: Path) -> None:
    storage_fault(
        tmp_path,
        lambda images: remount(images, "ro"),
        lambda images: remount(images, "rw"),
        "Read-only file system",
    )


def test_disk_full_for_a_while(tmp_path: Path) -> None:
    storage_fault(
        tmp_path,
        fill,
        lambda images: (images / "ballast").unlink(),
        "No space left on device",
    )


def test_disk_full_under_the_sqlite_database(tmp_path: Path) -> None:
    """The embedded default on a full disk: its SQLite file, images and log share the small
    filesystem. Expected: the API answers a clear error while the database cannot write (the
    wire's error shape, as for a PostgreSQL outage), and the jobs and server come through."""
    disk = tmp_path / "disk"
    with tmpfs(disk, "48m"):
        deployment = deploy(disk / "server")
        try:
            result = load_through(deployment, lambda: fill(disk), (disk / "ballast").unlink)
            recovers(deployment)
            assert not check_outputs(deployment, result)
            # No log: the lines written while the disk was full are lost with it.
            verdict = verify(result, deployment.database_url)
        finally:
            deployment.server.stop()
    print(report(verdict))

    assert verdict.submitted == PACED.jobs and verdict.submitted == verdict.finished
    assert not (verdict.lost or verdict.duplicates or verdict.orphans), report(verdict)
    assert set(verdict.statuses) <= {"success", "failed"}, report(verdict)
    # What fails today: submissions while the disk is full answer HTTP 500.
    assert verdict.http_5xx == 0, report(verdict)


#: A process that dies the way a SIGKILLed worker can: inside LocalStore.put, after creating its
#: temporary file and before renaming it into place.
KILLED_WRITE = """
import os, signal, sys
from pathlib import Path
from sdapi.storage.local import LocalStore
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
LocalStore(Path(sys.argv[1])).put("generations/killed-0.png", b"\\x89PNG" + bytes(4096))
"""


def test_partial_file_of_a_killed_write_is_removed(tmp_path: Path) -> None:
    """Seen under test_workers_killed_at_random_lose_nothing when a kill lands mid-write; made
    certain here. An hour-old temporary file is no write in progress: expected gone once the
    server has started and its retention sweep has come round."""
    images = tmp_path / "images"
    died = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(images)], check=False)
    assert died.returncode == -signal.SIGKILL
    (partial,) = (images / "generations").glob(".tmp-*")
    an_hour_ago = time.time() - 3600
    os.utime(partial, (an_hour_ago, an_hour_ago))
    args = ("--retention", "2s")
    deployment = deploy(tmp_path / "server", storage=images, workers=1, args=args)
    try:
        recovers(deployment)
        time.sleep(2 * 2 + 1)  # two sweeps of a 2 s retention
        left = sorted(path.name for path in (images / "generations").glob(".tmp-*"))
    finally:
        deployment.server.stop()
    assert left == [], f"left behind: {left}"
