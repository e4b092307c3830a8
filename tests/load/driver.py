"""The load driver: one piece of code for bench/load.py, bench/soak.py and the quick CI suites.

Many client threads share a plan of jobs. Each client takes its next job from the plan, submits
it (`instant_response`, a `track_id` of its own so a retried submission can never queue a second
job), and fetches the jobs it has in flight until each reaches a final state. A refused or failed
submission is retried with the same `track_id`: refusals (rate limits, a full queue) and errors
are counted, never hidden. Afterwards `verify` compares what the clients saw with the database
and the worker logs: every accepted job answered once and ended once, none lost, none extra.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from sdapi.errors import DatabaseUnavailable, JobNotFound
from tests.e2e.db import query
from tests.e2e.server import Server, create_key, free_port

#: The fetch statuses that end a job (an expired job answers `error` with `state: expired`).
FINAL = frozenset({"success", "failed", "cancelled", "expired"})
DB_UNAVAILABLE = str(DatabaseUnavailable.message)
NOT_FOUND = str(JobNotFound.message)
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class LoadConfig:
    clients: int = 8
    #: Jobs over all clients; None: until `Plan.stop` is set (the soak).
    jobs: int | None = 60
    size: int = 64
    steps: int = 1
    #: Jobs a client has submitted and not yet seen end, at most (0: no limit).
    inflight: int = 0
    #: Seconds a client leaves between two submissions (0: as fast as answers come).
    pace_s: float = 0.0
    #: Seconds between two fetches of the same job.
    poll_s: float = 0.25
    #: The whole run, submissions and fetches, ends by then; unfinished jobs count as lost.
    timeout_s: float = 120.0
    #: Above the PostgreSQL pool's 10 s wait, so an outage answers an error, not a timeout.
    request_timeout_s: float = 30.0


@dataclass
class Submission:
    client: int
    number: int
    key: str
    prompt: str
    track_id: str
    job_id: int | None = None
    #: The fetch answer that ended the job.
    final: dict[str, Any] | None = None
    #: Why the server refused it for good (a validation error, not a transient one).
    rejected: str | None = None
    tries: int = 0
    retry_at: float = 0.0
    next_fetch: float = 0.0
    accepted_at: float = 0.0
    ended_at: float = 0.0


class Plan:
    """The jobs to submit, handed out to clients as they ask; keys in turn per client."""

    def __init__(self, keys: Sequence[str], total: int | None, tag: str | None = None) -> None:
        self.keys = list(keys)
        self.total = total
        self.tag = tag or uuid.uuid4().hex[:8]
        #: Stop submitting (the soak's end); jobs under way are still fetched to their end.
        self.stop = threading.Event()
        #: Stop everything now (a test gave up waiting).
        self.abort = threading.Event()
        self.submissions: list[Submission] = []
        self._lock = threading.Lock()

    def take(self, client: int) -> Submission | None:
        with self._lock:
            number = len(self.submissions)
            if self.stop.is_set() or (self.total is not None and number >= self.total):
                return None
            sub = Submission(
                client,
                number,
                self.keys[client % len(self.keys)],
                f"load {self.tag} client {client} job {number}",
                f"{self.tag}-{number}",
            )
            self.submissions.append(sub)
            return sub

    def exhausted(self) -> bool:
        with self._lock:
            done = self.total is not None and len(self.submissions) >= self.total
            return done or self.stop.is_set()


class Stats:
    """Every request's outcome and latency, from all client threads."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {"submit": [], "fetch": []}
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def record(self, kind: str, label: str, seconds: float | None) -> None:
        with self._lock:
            self.outcomes[kind, label] += 1
            if seconds is not None:
                self.latencies[kind].append(seconds)

    def count(self, label: str) -> int:
        return sum(n for (_, name), n in self.outcomes.items() if name.startswith(label))


def classify(answer: httpx.Response) -> tuple[str, dict[str, Any]]:
    """A label for one answer: `ok`, `refused`, `db_unavailable`, `not_found`, `http_<code>`
    or `error:<message>`, with the JSON body."""
    try:
        data = answer.json()
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    if answer.status_code != 200:
        return f"http_{answer.status_code}", data
    status = data.get("status")
    if status in FINAL or status == "processing" or data.get("state") == "expired":
        return "ok", data
    message = data.get("message")
    if "retry_after" in data:
        return "refused", data
    if message == DB_UNAVAILABLE:
        return "db_unavailable", data
    if message == NOT_FOUND:
        return "not_found", data
    return f"error:{str(message)[:80]}", data


def wire_state(answer: dict[str, Any]) -> str:
    """processing, success, failed, cancelled or expired."""
    return "expired" if answer.get("state") == "expired" else str(answer.get("status"))


def is_retryable(label: str) -> bool:
    return label in ("refused", "db_unavailable") or label.startswith(("http_5", "transport"))


class LoadClient:
    """One client thread: submits its jobs and fetches them until each ends."""

    def __init__(
        self, number: int, base_url: str, plan: Plan, stats: Stats, cfg: LoadConfig
    ) -> None:
        self.number = number
        self.base_url = base_url
        self.plan = plan
        self.stats = stats
        self.cfg = cfg
        self.deadline = time.monotonic() + cfg.timeout_s
        self.current: Submission | None = None
        self.waiting: list[Submission] = []
        self.next_submit = 0.0

    def run(self) -> None:
        with httpx.Client(timeout=self.cfg.request_timeout_s) as self.http:
            while time.monotonic() < self.deadline and not self._done():
                if self.plan.abort.is_set():
                    return
                self._take()
                self._submit()
                self._fetch_due()
                time.sleep(self._pause())

    def _done(self) -> bool:
        return self.current is None and not self.waiting and self.plan.exhausted()

    def _take(self) -> None:
        room = not self.cfg.inflight or len(self.waiting) < self.cfg.inflight
        if self.current is None and room and time.monotonic() >= self.next_submit:
            self.current = self.plan.take(self.number)

    def _submit(self) -> None:
        sub = self.current
        if sub is None or time.monotonic() < sub.retry_at:
            return
        label, data = self._post("submit", "/api/v3/text2img", job_body(sub, self.cfg))
        now = time.monotonic()
        sub.tries += 1
        if label == "ok":
            sub.job_id, sub.accepted_at = int(data["id"]), now
            sub.next_fetch = now + self.cfg.poll_s
            self.waiting.append(sub)
        elif not is_retryable(label):
            sub.rejected = label
        else:
            sub.retry_at = now + retry_delay(sub.tries, data)
            return
        self.current = None
        self.next_submit = now + self.cfg.pace_s

    def _fetch_due(self) -> None:
        for sub in self.waiting:
            if sub.next_fetch > time.monotonic():
                continue
            label, data = self._post("fetch", f"/api/v3/fetch/{sub.job_id}", {"key": sub.key})
            sub.next_fetch = time.monotonic() + self.cfg.poll_s
            if label == "not_found" or (label == "ok" and wire_state(data) in FINAL):
                sub.final, sub.ended_at = data, time.monotonic()
        self.waiting = [sub for sub in self.waiting if sub.final is None]

    def _pause(self) -> float:
        """Until the next thing due, between 5 ms and 50 ms."""
        due = [sub.next_fetch for sub in self.waiting]
        if self.current is not None:
            due.append(self.current.retry_at)
        elif not self.plan.exhausted():
            due.append(self.next_submit)
        wait = min(due, default=time.monotonic() + 0.05) - time.monotonic()
        return min(max(wait, 0.005), 0.05)

    def _post(self, kind: str, path: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        started = time.perf_counter()
        try:
            answer = self.http.post(self.base_url + path, json=body)
        except httpx.HTTPError as exc:
            self.stats.record(kind, f"transport:{type(exc).__name__}", None)
            return f"transport:{type(exc).__name__}", {}
        label, data = classify(answer)
        self.stats.record(kind, label, time.perf_counter() - started)
        return label, data


def job_body(sub: Submission, cfg: LoadConfig) -> dict[str, Any]:
    return {
        "key": sub.key,
        "prompt": sub.prompt,
        "width": cfg.size,
        "height": cfg.size,
        "samples": 1,
        "num_inference_steps": cfg.steps,
        "seed": sub.number,
        "instant_response": True,
        "track_id": sub.track_id,
    }


def retry_delay(tries: int, answer: dict[str, Any]) -> float:
    """The server's retry_after when it gave one, else 0.25 s doubling up to 2 s."""
    if isinstance(answer.get("retry_after"), int | float):
        return min(float(answer["retry_after"]), 10.0)
    return min(0.25 * 2 ** (tries - 1), 2.0)


@dataclass
class LoadResult:
    plan: Plan
    stats: Stats
    seconds: float


def run_load(base_url: str, plan: Plan, cfg: LoadConfig) -> LoadResult:
    """Drive `cfg.clients` clients until the plan is done (or the time is up)."""
    stats = Stats()
    clients = [LoadClient(n, base_url, plan, stats, cfg) for n in range(cfg.clients)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=cfg.clients, thread_name_prefix="load") as pool:
        for done in [pool.submit(client.run) for client in clients]:
            done.result()  # a client's own bug surfaces here
    return LoadResult(plan, stats, time.monotonic() - started)


class BackgroundLoad:
    """`run_load` in a thread of its own, while a test breaks things. As a context manager it
    stops the clients on the way out, whatever happened (or the interpreter's exit would wait
    for them)."""

    def __init__(self, base_url: str, plan: Plan, cfg: LoadConfig) -> None:
        self.plan = plan
        self._result: LoadResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(base_url, plan, cfg), name="load", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> BackgroundLoad:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.plan.abort.set()
        self._thread.join()

    def _run(self, base_url: str, plan: Plan, cfg: LoadConfig) -> None:
        try:
            self._result = run_load(base_url, plan, cfg)
        except BaseException as exc:  # handed to the test thread by join()
            self._error = exc

    def accepted(self) -> int:
        return sum(1 for sub in list(self.plan.submissions) if sub.job_id is not None)

    def wait_accepted(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.accepted() < count and self._thread.is_alive():
            assert time.monotonic() < deadline, f"only {self.accepted()} jobs were accepted"
            time.sleep(0.05)

    def join(self, timeout: float) -> LoadResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.plan.abort.set()
            self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None and not self.plan.abort.is_set(), "the load ran late"
        return self._result


# Verification ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What a load run comes to: the counts bench/load.py prints and the tests assert."""

    submitted: int = 0
    refused: int = 0
    rejected: int = 0
    unsent: int = 0
    finished: int = 0
    lost: int = 0
    duplicates: int = 0
    orphans: int = 0
    mismatched: int = 0
    ended_twice: int = 0
    db_disagrees: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    failed_requests: int = 0
    http_5xx: int = 0
    submit_ms: tuple[float, float] = (math.nan, math.nan)
    fetch_ms: tuple[float, float] = (math.nan, math.nan)
    seconds: float = 0.0
    #: Examples of whatever went wrong, for assertion messages.
    problems: list[str] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return self.failed_requests / self.requests if self.requests else 0.0

    @property
    def throughput(self) -> float:
        return self.finished / self.seconds if self.seconds else 0.0

    @property
    def clean(self) -> bool:
        """Nothing lost, duplicated or contradicted; every accepted job ended."""
        return (
            not (
                self.lost
                or self.duplicates
                or self.orphans
                or self.mismatched
                or self.ended_twice
                or self.db_disagrees
                or self.http_5xx
            )
            and self.submitted == self.finished
        )

    def note(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


def verify(result: LoadResult, database_url: str, log: str = "") -> Verdict:
    """Count what the clients saw, then check it against the database and the worker log."""
    verdict = Verdict(seconds=result.seconds)
    accepted = [sub for sub in result.plan.submissions if sub.job_id is not None]
    _count_clients(verdict, result, accepted)
    _check_answers(verdict, accepted)
    _check_database(verdict, result.plan.tag, accepted, database_url)
    if log:
        _check_log(verdict, accepted, log)
    return verdict


def _count_clients(verdict: Verdict, result: LoadResult, accepted: list[Submission]) -> None:
    stats = result.stats
    verdict.submitted = len(accepted)
    verdict.rejected = sum(1 for sub in result.plan.submissions if sub.rejected)
    verdict.unsent = len(result.plan.submissions) - verdict.submitted - verdict.rejected
    verdict.refused = stats.count("refused")
    verdict.requests = sum(stats.outcomes.values())
    verdict.failed_requests = verdict.requests - stats.count("ok")
    verdict.http_5xx = stats.count("http_5")
    verdict.errors = Counter(
        {label: n for (_, label), n in stats.outcomes.items() if label != "ok"}
    )
    verdict.submit_ms = percentiles_ms(stats.latencies["submit"])
    verdict.fetch_ms = percentiles_ms(stats.latencies["fetch"])


def _check_answers(verdict: Verdict, accepted: list[Submission]) -> None:
    ids = Counter(sub.job_id for sub in accepted)
    verdict.duplicates = sum(n - 1 for n in ids.values())
    for job_id, n in ids.items():
        if n > 1:
            verdict.note(f"job {job_id} was answered for {n} submissions")
    for sub in accepted:
        if sub.final is None or wire_state(sub.final) not in FINAL:
            verdict.lost += 1
            verdict.note(f"job {sub.job_id}: never ended (last answer {sub.final})")
            continue
        verdict.finished += 1
        verdict.statuses[wire_state(sub.final)] += 1
        prompt = sub.final.get("meta", {}).get("prompt", sub.prompt)
        if sub.final.get("id") != sub.job_id or prompt != sub.prompt:
            verdict.mismatched += 1
            verdict.note(f"job {sub.job_id}: answered {sub.final} for {sub.prompt!r}")


def _check_database(
    verdict: Verdict, tag: str, accepted: list[Submission], database_url: str
) -> None:
    rows = query(
        database_url, "SELECT id, track_id, status FROM jobs WHERE track_id LIKE ?", tag + "-%"
    )
    by_id = {job_id: (track_id, status) for job_id, track_id, status in rows}
    per_track = Counter(track_id for _, track_id, _ in rows)
    for track_id, n in per_track.items():
        if n > 1:
            verdict.duplicates += n - 1
            verdict.note(f"track_id {track_id} was queued {n} times")
    known = {sub.job_id for sub in accepted}
    verdict.orphans = len(set(by_id) - known)
    if verdict.orphans:
        verdict.note(f"jobs queued but never answered: {sorted(set(by_id) - known)[:10]}")
    for sub in accepted:
        track_id, status = by_id.get(sub.job_id or 0, (None, None))
        ended = sub.final and wire_state(sub.final)
        if track_id != sub.track_id or (ended in FINAL and status not in (ended, "expired")):
            verdict.db_disagrees += 1
            verdict.note(f"job {sub.job_id}: database has {track_id}/{status}, fetch {ended}")


def _check_log(verdict: Verdict, accepted: list[Submission], log: str) -> None:
    """Each job's success is recorded at most once (a rerun after a crash may store again)."""
    succeeded = Counter(int(m) for m in re.findall(r"job (\d+): success", log))
    for sub in accepted:
        n = succeeded[sub.job_id or 0]
        ended_success = sub.final is not None and wire_state(sub.final) == "success"
        if n > 1 or (ended_success and n != 1) or (not ended_success and n):
            verdict.ended_twice += 1
            verdict.note(f"job {sub.job_id}: {n} successes in the log, fetch {sub.final}")


def percentiles_ms(values: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 (nearest rank) in milliseconds."""
    if not values:
        return (math.nan, math.nan)
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(math.ceil(q * len(ordered)) - 1, 0)] * 1000

    return rank(0.50), rank(0.99)


def report(verdict: Verdict) -> str:
    """The figures, one per line."""
    v = verdict
    errors = ", ".join(f"{label} {n}" for label, n in v.errors.most_common()) or "none"
    lines = [
        f"submitted (accepted)   {v.submitted}",
        f"finished               {v.finished}  {dict(v.statuses)}",
        f"lost                   {v.lost}",
        f"duplicates             {v.duplicates}",
        f"queued, never answered {v.orphans}",
        f"ended twice            {v.ended_twice}",
        f"refused (429/503 busy) {v.refused}   given up {v.rejected}   never accepted {v.unsent}",
        f"requests               {v.requests}   not ok {v.failed_requests} "
        f"({v.error_rate:.2%}), 5xx {v.http_5xx}: {errors}",
        f"submit latency         p50 {v.submit_ms[0]:.1f} ms   p99 {v.submit_ms[1]:.1f} ms",
        f"fetch latency          p50 {v.fetch_ms[0]:.1f} ms   p99 {v.fetch_ms[1]:.1f} ms",
        f"throughput             {v.throughput:.1f} jobs/s ({v.finished} in {v.seconds:.1f} s)",
    ]
    return "\n".join(lines + [f"problem: {p}" for p in v.problems])


# Deployments ------------------------------------------------------------------------------------


@dataclass
class Deployment:
    server: Server
    keys: list[str]
    database_url: str
    #: The image directory (local storage).
    storage: Path

    @property
    def url(self) -> str:
        return self.server.url

    def log(self) -> str:
        return self.server.log()

    def outputs(self) -> list[Path]:
        return sorted((self.storage / "generations").iterdir())


def deploy(
    data_dir: Path,
    *,
    database_url: str | None = None,
    keys: int = 2,
    workers: int = 2,
    storage: Path | None = None,
    args: Sequence[str] = (),
) -> Deployment:
    """A started `sdapi serve` with `keys` fresh keys and warm workers, queue caps off."""
    data_dir.mkdir(parents=True, exist_ok=True)
    seed_tiny_model(data_dir)
    url = database_url or f"sqlite:///{data_dir / 'sdapi.db'}"
    made = [create_key(data_dir, f"load{i}", "--database", url) for i in range(keys)]
    flags = ["--database", url, "--workers", str(workers), "--threads", "1"]
    flags += ["--sync-timeout", "0", "--max-queued-per-key", "0", "--max-queued", "0"]
    if storage is not None:
        flags += ["--storage", str(storage)]
    server = Server(data_dir, free_port(), (*flags, *args)).start()
    deployment = Deployment(server, made, url, storage or data_dir / "images")
    try:
        wait_workers_ready(server, workers)
    except BaseException:
        server.stop()
        raise
    return deployment


@contextmanager
def scratch_deployment(
    name: str,
    database: str,
    postgres_admin: str | None,
    *,
    keys: int,
    workers: int,
    args: Sequence[str] = (),
) -> Iterator[Deployment]:
    """`deploy` on a temporary data directory, and on a fresh PostgreSQL database when
    `database` is "postgres"; the server is stopped and both are removed afterwards."""
    with ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"sdapi-{name}-")))
        url = None
        if database == "postgres":
            url = stack.enter_context(scratch_postgres(postgres_admin))
        deployment = deploy(data_dir, database_url=url, keys=keys, workers=workers, args=args)
        stack.callback(deployment.server.stop)
        yield deployment


def wait_workers_ready(server: Server, workers: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while server.log().count("ready (models") < workers:
        assert server.proc is not None and server.proc.poll() is None, server.log()
        assert time.monotonic() < deadline, f"workers not ready:\n{server.log()[-3000:]}"
        time.sleep(0.1)


@functools.cache
def tiny_model_folder() -> Path:
    """sdapi-tiny built once per process (a subprocess keeps torch out of this one)."""
    home = Path(tempfile.mkdtemp(prefix="sdapi-load-model-"))
    atexit.register(shutil.rmtree, home, True)
    dest = home / "sdapi-tiny"
    build = "import sys, pathlib; from sdapi.engine.tiny import build_tiny_model as b; "
    build += "b(pathlib.Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", build, str(dest)], check=True, timeout=600)
    return dest


def seed_tiny_model(data_dir: Path) -> None:
    """Copy the built model where `serve` looks for it, so workers start in seconds."""
    dest = data_dir / "models" / "sdapi-tiny"
    if not dest.exists():
        shutil.copytree(tiny_model_folder(), dest)


@contextmanager
def scratch_postgres(admin_url: str | None = None) -> Iterator[str]:
    """A fresh database on the server (as tests/conftest.py makes them), dropped after."""
    import psycopg
    from psycopg import sql

    admin_url = admin_url or os.environ.get("SDAPI_TEST_POSTGRES") or DEFAULT_POSTGRES
    name = f"sdapi_load_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            admin.execute(drop.format(sql.Identifier(name)))


# Processes --------------------------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """Live children of `pid` (Linux /proc): the worker processes of `sdapi serve`."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def rss_mib(pid: int) -> float | None:
    """Resident memory of a live process in MiB (VmRSS), None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else None


# Soak: memory and history over a long run ------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    #: time.monotonic() when taken (the clock Submission.ended_at uses).
    at: float
    #: Resident MiB by process: "api" (the serve process) and "worker <pid>".
    rss: dict[str, float]
    #: Rows in the jobs table, and those not expired.
    rows: int
    live_rows: int
    #: Files in the image directory's generations/.
    files: int


def take_sample(deployment: Deployment) -> Sample:
    assert deployment.server.proc is not None
    pid = deployment.server.proc.pid
    rss = {"api": rss_mib(pid)}
    rss |= {f"worker {child}": rss_mib(child) for child in child_pids(pid)}
    rows, live = query(
        deployment.database_url,
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status <> 'expired' THEN 1 ELSE 0 END), 0)"
        " FROM jobs",
    )[0]
    files = sum(1 for _ in (deployment.storage / "generations").iterdir())
    measured = {name: mib for name, mib in rss.items() if mib is not None}
    return Sample(time.monotonic(), measured, int(rows), int(live), files)


@dataclass(frozen=True)
class Growth:
    """One process's resident memory after the warm-up."""

    name: str
    start: float
    peak: float
    end: float
    per_hour: float
    samples: int

    @property
    def growth(self) -> float:
        return self.end - self.start


def memory_growth(samples: Sequence[Sample], after: float) -> list[Growth]:
    """Per process: start and end (medians of the first and last 3 samples taken from `after`,
    so one sample's noise does not decide), peak, and the least-squares slope per hour."""
    names = dict.fromkeys(name for s in samples for name in s.rss)
    found = []
    for name in names:
        series = [(s.at, s.rss[name]) for s in samples if s.at >= after and name in s.rss]
        if len(series) < 2:
            continue
        values = [mib for _, mib in series]
        start, end = median(values[:3]), median(values[-3:])
        found.append(Growth(name, start, max(values), end, slope(series) * 3600, len(series)))
    return found


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def slope(points: Sequence[tuple[float, float]]) -> float:
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in points) / spread if spread else 0.0


def sweep_every(retention_s: float) -> float:
    """How often the server's retention sweep comes round (sdapi.retention)."""
    return min(60.0, max(retention_s / 10, 1.0))


@dataclass(frozen=True)
class History:
    """Files and live rows against what the retention window allows at each sample."""

    max_files: int
    max_live_rows: int
    #: The largest excess over the bound at any sample (0 or less: within it).
    worst_excess: int
    rows: int

    @property
    def bounded(self) -> bool:
        return self.worst_excess <= 0


def history(samples: Sequence[Sample], plan: Plan, retention_s: float, slack: int) -> History:
    """At each sample, files and live rows may be at most the jobs that ended within the
    retention window plus two sweeps (a few seconds more for fetch lag), plus `slack` for jobs
    queued, running, or ended and not yet seen by their client."""
    window = retention_s + 2 * sweep_every(retention_s) + 2
    ended = sorted(sub.ended_at for sub in plan.submissions if sub.ended_at)
    worst = -(10**9)
    for s in samples:
        recent = sum(1 for at in ended if s.at - window < at <= s.at)
        worst = max(worst, s.files - recent - slack, s.live_rows - recent - slack)
    return History(
        max((s.files for s in samples), default=0),
        max((s.live_rows for s in samples), default=0),
        worst,
        samples[-1].rows if samples else 0,
    )


def soak(
    deployment: Deployment,
    cfg: LoadConfig,
    seconds: float,
    every_s: float,
    on_sample: Callable[[Sample], None] | None = None,
) -> tuple[LoadResult, list[Sample]]:
    """Jobs without pause for `seconds`, sampling every `every_s`; then the load drains."""
    plan = Plan(deployment.keys, None)
    samples: list[Sample] = []
    end = time.monotonic() + seconds
    with BackgroundLoad(deployment.url, plan, cfg) as load:
        while time.monotonic() < end:
            samples.append(take_sample(deployment))
            if on_sample is not None:
                on_sample(samples[-1])
            time.sleep(max(min(every_s, end - time.monotonic()), 0))
        plan.stop.set()
        result = load.join(cfg.request_timeout_s + 60)
    samples.append(take_sample(deployment))
    return result, samples


def old_history(deployment: Deployment, plan: Plan, before: float) -> tuple[list[int], list[str]]:
    """Jobs the clients saw end before `before` (monotonic) that the database has not marked
    expired, and their files still present: both should be empty past the retention window."""
    old = {sub.job_id: sub for sub in plan.submissions if sub.ended_at and sub.ended_at < before}
    sql = "SELECT id, status FROM jobs WHERE track_id LIKE ?"
    rows = query(deployment.database_url, sql, plan.tag + "-%")
    kept = sorted(job_id for job_id, status in rows if job_id in old and status != "expired")
    present = {path.name for path in deployment.outputs()}
    files = sorted(name for sub in old.values() for name in output_names(sub) if name in present)
    return kept, files


def output_names(sub: Submission) -> list[str]:
    """The file names of a job's images (its links' last part), once its end was seen."""
    links = (sub.final or {}).get("future_links", [])
    return [link.rsplit("/", 1)[1] for link in links]
