"""How many jobs per second the queue alone can take, per backend, side by side in one run.

No model work: producers enqueue jobs while worker threads claim and complete them, each worker
on its own connection, as separate worker processes would. Prints jobs/s for enqueue alone, for
claim+complete alone, and for both running at once.

    .venv/bin/python bench/queue_throughput.py [--jobs 2000] [--workers 4]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sdapi.backends import open_database
from sdapi.jobs import GenerationRequest, Task
from sdapi.queue.base import JobQueue, NewJob
from sdapi.queue.memory import MemoryQueue
from sdapi.settings import Settings

REQUEST = GenerationRequest(Task.TEXT2IMG, "sdapi-tiny", "bench", "", 512, 512, 1, 20, 7.5, 1)


def enqueue_all(queue: JobQueue, jobs: int) -> None:
    for i in range(jobs):
        queue.enqueue(NewJob("bench", REQUEST, (f"generations/b{i}-0.png",)))


def drain(queue: JobQueue, worker: str, stop: Callable[[], bool]) -> int:
    done = 0
    while True:
        claimed = queue.claim(worker, lease_s=60)
        if not claimed:
            if stop():
                return done
            queue.wait_for_work(0.01)  # as an idle worker does: NOTIFY, or a short sleep
            continue
        for job in claimed:
            queue.complete(job.id, job.lease_id or "", generation_seconds=1.0)
            done += 1


def run_workers(queue: JobQueue, workers: int, stop: Callable[[], bool]) -> list[threading.Thread]:
    threads = [threading.Thread(target=drain, args=(queue, f"w{i}", stop)) for i in range(workers)]
    for thread in threads:
        thread.start()
    return threads


def measure(queue: JobQueue, jobs: int, workers: int) -> tuple[float, float, float]:
    started = time.perf_counter()
    enqueue_all(queue, jobs)
    enqueue_rate = jobs / (time.perf_counter() - started)

    started = time.perf_counter()
    for thread in run_workers(queue, workers, stop=lambda: True):
        thread.join()
    drain_rate = jobs / (time.perf_counter() - started)

    producing = threading.Event()
    producing.set()
    started = time.perf_counter()
    threads = run_workers(queue, workers, stop=lambda: not producing.is_set())
    enqueue_all(queue, jobs)
    producing.clear()
    for thread in threads:
        thread.join()
    both_rate = jobs / (time.perf_counter() - started)
    return enqueue_rate, drain_rate, both_rate


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    import psycopg

    name = f"sdapi_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="admin URL; a scratch database is created and dropped ('' to skip)",
    )
    args = parser.parse_args()

    print(f"{args.jobs} jobs, {args.workers} worker threads; jobs per second")
    print(f"{'backend':<10} {'enqueue':>9} {'claim+complete':>15} {'both at once':>13}")

    def report(name: str, queue: JobQueue) -> None:
        rates = measure(queue, args.jobs, args.workers)
        print(f"{name:<10} {rates[0]:>9.0f} {rates[1]:>15.0f} {rates[2]:>13.0f}", flush=True)
        queue.close()

    report("memory", MemoryQueue())
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database=f"sqlite:///{Path(tmp) / 'bench.db'}")
        report("sqlite", open_database(settings)[0])
    if args.postgres:
        with postgres_database(args.postgres) as url:
            report("postgres", open_database(Settings(database=url))[0])


if __name__ == "__main__":
    main()
