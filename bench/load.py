"""Load: many concurrent clients with several keys submitting and fetching against `sdapi serve`.

    .venv/bin/python bench/load.py --database sqlite --clients 32 --keys 4 --jobs 400
    .venv/bin/python bench/load.py --database postgres --clients 32 --keys 4 --jobs 400

Starts a real server (tiny model, 64x64, 1 step: the load is on the API and the queue) on a
fresh data directory, and for PostgreSQL a scratch database on 127.0.0.1:5432 (or
SDAPI_TEST_POSTGRES), dropped after. Queue caps are off unless given: a refusal is counted
apart, as the honest answer it is. Prints submitted, finished, duplicates, lost, error rate,
p50/p99 latency of submit and fetch, and throughput; exits 1 if a job was lost, duplicated or
contradicted, or a request crashed (5xx). The quick CI version is tests/load/test_load.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.load

from tests.load.driver import LoadConfig, Plan, report, run_load, scratch_deployment, verify


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-admin", help="admin URL (default: SDAPI_TEST_POSTGRES)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=400, help="over all clients")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between fetches")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole run")
    parser.add_argument("--max-queued-per-key", type=int, default=0)
    parser.add_argument("--max-queued", type=int, default=0)
    parser.add_argument("--rate-limit", type=float, default=0, help="per key and minute")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    cfg = LoadConfig(
        clients=args.clients,
        jobs=args.jobs,
        size=args.size,
        steps=args.steps,
        poll_s=args.poll,
        timeout_s=args.timeout,
    )
    limits = ["--max-queued-per-key", str(args.max_queued_per_key)]
    limits += ["--max-queued", str(args.max_queued), "--rate-limit", str(args.rate_limit)]
    print(
        f"{args.database}: {cfg.clients} clients, {args.keys} keys, {cfg.jobs} jobs, "
        f"{args.workers} workers, {cfg.size}x{cfg.size} px, {cfg.steps} steps, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with scratch_deployment(
        "load",
        args.database,
        args.postgres_admin,
        keys=args.keys,
        workers=args.workers,
        args=limits,
    ) as deployment:
        try:
            result = run_load(deployment.url, Plan(deployment.keys, cfg.jobs), cfg)
        finally:
            deployment.server.stop()  # all its log lines are in before verify reads them
        verdict = verify(result, deployment.database_url, deployment.log())
    print(report(verdict))
    return 0 if verdict.clean else 1


if __name__ == "__main__":
    sys.exit(main())
