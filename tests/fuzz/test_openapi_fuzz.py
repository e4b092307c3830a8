"""Schemathesis against the server's own OpenAPI document: every route, valid and invalid input.

A real `sdapi serve` (SQLite, local images, one tiny-model worker) runs on loopback with small
limits, so every job the fuzzer gets queued is cheap; a second API process on the same data
directory serves the `--http-errors` wire. Each is fuzzed against the document it serves: every
answer must be free of 5xx and match the documented schema, status code and content type, and
no job the server accepted may fail. The quick run (CI) draws `SDAPI_FUZZ_EXAMPLES` examples per
operation (default 30) from a fixed seed; the long run is the same test with more:
`SDAPI_FUZZ_EXAMPLES=1000 .venv/bin/pytest tests/fuzz`.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from sdapi.api.app import create_app
from sdapi.auth.keys import MemoryKeyStore
from sdapi.backends import Backends
from sdapi.queue.base import DEADLINE_ERROR
from sdapi.queue.memory import MemoryQueue
from sdapi.settings import Settings
from sdapi.storage.memory import MemoryStore
from tests.e2e.db import query
from tests.e2e.server import Server, create_key, free_port

EXAMPLES = int(os.environ.get("SDAPI_FUZZ_EXAMPLES", "30"))
SEED = int(os.environ.get("SDAPI_FUZZ_SEED", "20240917"))
# One test runs every operation of one wire: a long run needs more than the suite's 300 s.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300 + EXAMPLES)]

#: Small limits keep every job the fuzzer manages to queue cheap for the tiny model. The served
#: document carries them, so valid (positive) cases stay within what the server accepts.
LIMITS = {"max_width": 128, "max_height": 128, "max_steps": 4}
SERVE_ARGS = (
    "--sync-timeout", "0",  # answer at once: the fuzzer never waits on a generation
    "--max-queued-per-key", "0",  # thousands of queued jobs are the point, not a refusal
    "--max-queued", "0",
    "--max-key-failures", "0",  # bad keys are part of the input; never lock the fuzzer out
    "--threads", "1",  # leave the cores to the fuzzer and the API
    "--drain-timeout", "0",  # at the end, hand queued work back at once: nobody waits for it
)  # fmt: skip
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


def _served_document(http_errors: bool) -> dict[str, Any]:
    """The document a server with LIMITS serves, built in process (memory backends) so the
    tests exist at collection; the fixtures check the real server serves exactly this."""
    settings = Settings.model_construct(
        **LIMITS, http_errors=http_errors, webhook_secret="whsec_" + "A" * 32
    )
    backends = Backends(MemoryQueue(), MemoryKeyStore(), MemoryStore())
    with TestClient(create_app(settings, backends)) as client:
        doc: dict[str, Any] = client.get("/openapi.json").json()
    return doc


#: Values that broke lenient readers elsewhere, mixed into what the fuzzer draws: ids beyond
#: 64 bits, digits Python reads but JSON does not, numbers too long for int(), NUL, infinities.
EDGE_STRINGS = [
    "9" * 20, "-9" * 10, "1" * 5000, "+-1", "²", "٣", "1e999", "-inf", "NaN", "0x10", "1_0",
    " 64 ", "\x00", "a\x00b", "null", "yes", "-1", "0", "64", "data:,", "data:image/png;base64,",
]  # fmt: skip
EDGE_NUMBERS = [2**63, 2**64, -(2**63) - 1, 10**400, 1e308, -0.0, 5e-324, 0, -1]


def _config(seed: int) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": seed,
            "dictionaries": {
                "edge-strings": {"values": EDGE_STRINGS},
                "edge-numbers": {"values": EDGE_NUMBERS},
            },
            "generation": {
                "mode": "all",  # valid and invalid input
                "max-examples": EXAMPLES,
                "database": "none",  # the run is reproducible from the seed alone
                "dictionaries": {
                    "string": {"dictionary": "edge-strings", "probability": 0.1},
                    "integer": {"dictionary": "edge-numbers", "probability": 0.1},
                    "number": {"dictionary": "edge-numbers", "probability": 0.1},
                },
            },
            # A large body (base64 images) or a slow answer is normal here, not a bad test.
            "suppress-health-check": ["too_slow", "data_too_large", "filter_too_much"],
        }
    )


#: The v3 wire (errors are HTTP 200), and the same with `--http-errors` (errors are 4xx).
schema = schemathesis.openapi.from_dict(_served_document(False), config=_config(SEED))
#: The sibling families (dreambooth, v4, v6) run the same handlers as v3 and differ only in
#: spelling, which the first wire covers; on the --http-errors wire, v3 stands for them all.
ALIAS_FAMILIES = r"^/api/(v3/dreambooth|v4|v6)/"
http_errors_schema = schemathesis.openapi.from_dict(
    _served_document(True), config=_config(SEED + 1)
).exclude(path_regex=ALIAS_FAMILIES)


@dataclass
class Target:
    """The servers under test (one data directory), and what exists there for the hooks."""

    server: Server
    #: The same data directory served with `--http-errors` (no worker of its own).
    http_errors_server: Server
    key: str
    job_ids: list[int]
    files: dict[str, list[str]]
    #: Cases run, by wire and operation.
    cases: Counter[tuple[str, str]] = field(default_factory=Counter)


#: Set by the `target` fixture; the hooks read it while cases are drawn.
TARGETS: list[Target] = []


def _png_data_uri(color: str) -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


INIT_IMAGE = _png_data_uri("navy")
MASK_IMAGE = _png_data_uri("white")


def _job_body(**extra: object) -> dict[str, object]:
    return {
        "prompt": "fuzz seed",
        "width": 64,
        "height": 64,
        "num_inference_steps": 2,  # img2img runs int(steps x strength) of them: one
        "init_image": INIT_IMAGE,
        **extra,
    }


def _seed_jobs(server: Server, key: str) -> tuple[list[int], dict[str, list[str]]]:
    """Finished jobs with every kind of output and a cancelled one: real ids and real files."""
    temp = server.post(key, "/api/v3/img2img", _job_body(base64="yes", temp="yes"))
    plain = server.post(key, "/api/v3/text2img", _job_body())
    cancelled = server.post(key, "/api/v3/text2img", _job_body(num_inference_steps=4))
    server.post(key, f"/api/v3/cancel/{cancelled['id']}")
    ids = [temp["id"], plain["id"], cancelled["id"]]
    files: dict[str, list[str]] = {"generations": [], "temp": [], "inputs": []}
    for job_id in ids[:2]:
        done = server.wait_done(key, job_id)
        assert done["status"] == "success", done
        for url in [*done["output"], *filter(None, [done["meta"].get("init_image")])]:
            folder, _, name = url.removeprefix(server.url + "/").partition("/")
            files[folder].append(name)
    return ids, files


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, fuzz_report: list[str]) -> Iterator[Target]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    key = create_key(data_dir, "fuzz")
    env = {f"SDAPI_{name.upper()}": str(value) for name, value in LIMITS.items()}
    args = (*SERVE_ARGS, "--http-errors", "--workers", "0")
    servers = [
        Server(data_dir, free_port(), SERVE_ARGS, env=env),
        Server(data_dir, free_port(), args, env=env),
    ]
    started = time.monotonic()
    try:
        for server, fuzzed in zip(servers, (schema, http_errors_schema), strict=True):
            served = httpx.get(f"{server.start().url}/openapi.json").json()
            assert served == fuzzed.raw_schema, "the fuzzed document is not the served one"
        target = Target(*servers, key, *_seed_jobs(servers[0], key))
        TARGETS[:] = [target]
        yield target
    finally:
        for server in servers:
            server.stop()
    jobs = _jobs(data_dir)
    fuzz_report.extend(_figures(target, jobs, time.monotonic() - started))
    log = servers[0].log()  # both servers write to the data directory's log
    assert "Traceback" not in log, f"the server logged a traceback:\n{log[-4000:]}"
    # A request the server accepted must not fail in the worker (bad input is refused upfront).
    failed = [row for row in jobs if row[1] == "failed" and row[2] != DEADLINE_ERROR]
    assert not failed, f"accepted jobs failed: {failed[:5]}"


def _jobs(data_dir: Path) -> list[tuple[Any, ...]]:
    return query(f"sqlite:///{data_dir / 'sdapi.db'}", "SELECT id, status, error FROM jobs")


def _figures(target: Target, jobs: list[tuple[Any, ...]], seconds: float) -> list[str]:
    """What the README quotes: operations and cases per wire, jobs, and the time it all took."""
    lines = []
    for wire in ("default wire", "--http-errors"):
        counts = [n for (w, _), n in target.cases.items() if w == wire]
        lines.append(f"{wire}: {len(counts)} operations, {sum(counts)} cases")
    statuses = Counter(status for _, status, _ in jobs)
    lines.append(
        f"jobs accepted: {len(jobs)} ({', '.join(f'{n} {s}' for s, n in statuses.items())})"
    )
    return [*lines, f"SDAPI_FUZZ_EXAMPLES={EXAMPLES}, seed {SEED}: {seconds:.0f} s"]


def _one_in(n: int, rare: st.SearchStrategy[Any], usual: st.SearchStrategy[Any]) -> Any:
    """A strategy drawing from `rare` one time in n, else from `usual`."""
    return st.integers(1, n).flatmap(lambda i: rare if i == 1 else usual)


def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Nine bodies in ten carry the valid key (a generated one fails auth before any field is
    read); half of the image routes' bodies also carry usable images, so jobs get queued."""
    if not isinstance(body, dict):
        return st.just(body)
    keyed = {**body, "key": TARGETS[0].key}
    usual = st.just(keyed)
    if context.operation is not None and context.operation.path.endswith(("img2img", "inpaint")):
        usual = st.sampled_from(
            [keyed, {**keyed, "init_image": INIT_IMAGE, "mask_image": MASK_IMAGE}]
        )
    return _one_in(10, st.just(body), usual)


def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """One path in four names something that exists: a real job id or a stored file."""
    target = TARGETS[0]
    if not path_parameters:
        return st.just(path_parameters)
    if "job_id" in path_parameters:
        real = [{"job_id": str(job_id)} for job_id in target.job_ids]
    elif "file" in path_parameters and context.operation is not None:
        folder = context.operation.path.strip("/").split("/")[0]
        real = [{"file": name} for name in target.files.get(folder, [])]
    else:
        real = []
    as_drawn = st.just(path_parameters)
    return _one_in(4, st.sampled_from(real), as_drawn) if real else as_drawn


for _schema in (schema, http_errors_schema):
    _schema.hook(flatmap_body)
    _schema.hook(flatmap_path_parameters)


def _call(case: schemathesis.Case, target: Target, *, http_errors: bool) -> None:
    server = target.http_errors_server if http_errors else target.server
    target.cases["--http-errors" if http_errors else "default wire", case.operation.label] += 1
    case.call_and_validate(base_url=server.url, headers={"key": target.key}, checks=CHECKS)


@schema.parametrize()
def test_openapi_fuzz(case: schemathesis.Case, target: Target) -> None:
    _call(case, target, http_errors=False)


@http_errors_schema.parametrize()
def test_openapi_fuzz_http_errors(case: schemathesis.Case, target: Target) -> None:
    _call(case, target, http_errors=True)
