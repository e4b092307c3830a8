"""The quick soak (CI): ~40 s of jobs without pause under a retention of a few seconds. The
API's and the workers' memory stays within a generous bound once warm, and jobs that ended
before the retention window are expired with their files gone. The long run is bench/soak.py
(10 minutes and more, a 20 MiB bound)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.load.driver import (
    LoadConfig,
    deploy,
    history,
    memory_growth,
    old_history,
    report,
    soak,
    sweep_every,
    verify,
)

pytestmark = pytest.mark.e2e

RETENTION_S = 4.0
SOAK_S = 26.0
WARM_UP_S = 8.0
#: Generous: a short run on a shared 2-core machine; bench/soak.py holds the real bound.
BOUND_MIB = 60.0
CONFIG = LoadConfig(clients=3, jobs=None, size=64, steps=2, inflight=2, timeout_s=SOAK_S + 120)


def test_memory_flat_and_history_bounded(tmp_path: Path) -> None:
    retention = ("--retention", f"{RETENTION_S:g}s")
    deployment = deploy(tmp_path / "server", keys=2, workers=2, args=retention)
    started = time.monotonic()
    try:
        result, samples = soak(deployment, CONFIG, SOAK_S, every_s=2.0)
        # Wait out the window for the last jobs, then nothing older may be left.
        time.sleep(RETENTION_S + 2 * sweep_every(RETENTION_S) + 1)
        kept, files = old_history(deployment, result.plan, time.monotonic() - RETENTION_S - 3)
        left = sum(1 for _ in (deployment.storage / "generations").iterdir())
    finally:
        deployment.server.stop()
    verdict = verify(result, deployment.database_url, deployment.log())
    grown = memory_growth(samples, started + WARM_UP_S)
    bound = history(samples, result.plan, RETENTION_S, slack=CONFIG.clients * CONFIG.inflight + 18)
    for g in grown:
        print(f"{g.name}: {g.start:.1f} -> {g.end:.1f} MiB (peak {g.peak:.1f})")
    print(f"{bound}\n{report(verdict)}")

    assert verdict.clean and verdict.finished > 100, report(verdict)
    assert {g.name.split()[0] for g in grown} == {"api", "worker"}
    assert all(g.growth < BOUND_MIB for g in grown), grown
    assert bound.bounded, bound
    assert kept == [] and files == [], (kept, files)
    assert left == 0, "files of jobs past their retention are still there"
