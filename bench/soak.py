"""Soak: a long run of jobs; memory of the API and worker processes flat, history bounded.

    .venv/bin/python bench/soak.py --minutes 10

Starts a real `sdapi serve` (tiny model, 64x64, 2 workers) with `--retention` set, and keeps
`--clients` clients each with `--inflight` jobs under way for `--minutes`. Every `--every`
seconds it samples the resident memory (VmRSS) of the API process and of each worker (the
serve process's children), the rows of the jobs table and the files in the image directory.
Prints each process's RSS at the start (after `--warm-up`), its peak and end, the growth per
hour, and whether the files and live job rows stayed within what the retention window allows.
Exits 1 if a process grew more than `--bound` MiB after the warm-up, if history was not
bounded, or if a job was lost or duplicated. The quick CI version is
tests/load/test_soak_quick.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.load

from tests.load.driver import (
    Growth,
    History,
    LoadConfig,
    Sample,
    Verdict,
    history,
    memory_growth,
    report,
    scratch_deployment,
    soak,
    verify,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warm-up", type=float, default=60.0, help="seconds not judged")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--retention", type=float, default=60.0, help="seconds (--retention)")
    parser.add_argument("--bound", type=float, default=20.0, help="MiB of growth allowed")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-admin", help="admin URL (default: SDAPI_TEST_POSTGRES)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--inflight", type=int, default=2, help="jobs under way per client")
    parser.add_argument("--keys", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    return parser.parse_args()


def print_sample(started: float, sample: Sample) -> None:
    memory = " ".join(f"{name} {mib:.0f}" for name, mib in sample.rss.items())
    print(
        f"{sample.at - started:7.0f} s  RSS MiB: {memory}  rows {sample.rows} "
        f"(live {sample.live_rows})  files {sample.files}",
        flush=True,
    )


def print_summary(grown: list[Growth], kept: History, verdict: Verdict, bound: float) -> None:
    print(f"\n{'process':<14} {'start':>7} {'peak':>7} {'end':>7} {'growth':>7} {'per hour':>9}")
    for g in grown:
        print(
            f"{g.name:<14} {g.start:7.1f} {g.peak:7.1f} {g.end:7.1f} {g.growth:+7.1f} "
            f"{g.per_hour:+9.1f}  MiB{'  OVER THE BOUND' if g.growth > bound else ''}"
        )
    print(
        f"history: files at most {kept.max_files}, live job rows at most {kept.max_live_rows}, "
        f"{'bounded' if kept.bounded else 'NOT bounded'} by the retention window "
        f"(largest excess {kept.worst_excess}); jobs table {kept.rows} rows in all "
        "(expired jobs keep their row, so fetch can answer 'expired')"
    )
    print(report(verdict))


def main() -> int:
    args = parse_args()
    cfg = LoadConfig(
        clients=args.clients,
        jobs=None,
        size=args.size,
        steps=args.steps,
        inflight=args.inflight,
        timeout_s=args.minutes * 60 + 300,
    )
    print(
        f"soak {args.minutes:g} min on {args.database}: {cfg.clients} clients x {cfg.inflight} "
        f"jobs under way, {args.workers} workers, retention {args.retention:g} s, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    retention = ["--retention", f"{args.retention:g}s"]
    with scratch_deployment(
        "soak",
        args.database,
        args.postgres_admin,
        keys=args.keys,
        workers=args.workers,
        args=retention,
    ) as deployment:
        started = time.monotonic()
        result, samples = soak(
            deployment,
            cfg,
            args.minutes * 60,
            args.every,
            on_sample=lambda s: print_sample(started, s),
        )
        verdict = verify(result, deployment.database_url, deployment.log())
    grown = memory_growth(samples, started + args.warm_up)
    slack = cfg.clients * cfg.inflight + args.workers * 4 + 10
    kept = history(samples, result.plan, args.retention, slack)
    print_summary(grown, kept, verdict, args.bound)
    ok = kept.bounded and verdict.clean and all(g.growth <= args.bound for g in grown)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
