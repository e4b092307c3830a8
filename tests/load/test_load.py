"""The quick load suite (CI): many clients with several keys submitting and fetching at once
against a real `sdapi serve`, on SQLite and on PostgreSQL. The long run is bench/load.py, which
drives the same code with more clients and jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.load.driver import LoadConfig, Plan, deploy, report, run_load, verify

pytestmark = pytest.mark.e2e

CONFIG = LoadConfig(clients=8, jobs=60, size=64, steps=1, timeout_s=90)
KEYS = 3


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: the embedded SQLite file in the data directory."""
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None


def test_concurrent_clients_lose_and_duplicate_nothing(
    database_url: str | None, tmp_path: Path
) -> None:
    deployment = deploy(tmp_path / "server", database_url=database_url, keys=KEYS)
    try:
        plan = Plan(deployment.keys, CONFIG.jobs)
        result = run_load(deployment.url, plan, CONFIG)
    finally:
        deployment.server.stop()
    verdict = verify(result, deployment.database_url, deployment.log())
    print(report(verdict))

    assert verdict.submitted == verdict.finished == CONFIG.jobs, report(verdict)
    assert verdict.statuses == {"success": CONFIG.jobs}, report(verdict)
    assert verdict.clean, report(verdict)
    # Queue caps are off and nothing breaks: every request answers, none is refused.
    assert verdict.failed_requests == 0, report(verdict)
    # Every promised image is there, once.
    names = {p.name for p in deployment.outputs()}
    assert len(names) == CONFIG.jobs
