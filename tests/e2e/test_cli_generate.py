"""`sdapi generate`, `fetch` and `jobs` as subprocesses against a real `sdapi serve`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.conftest import Served, png_bytes

pytestmark = pytest.mark.e2e

SMALL = ("--width", "64", "--height", "64", "--steps", "2")
#: Variables that would make rich treat the test's pipes as a terminal and draw a live bar.
TERMINAL_VARS = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "SDAPI_KEY", "SDAPI_SERVER")


def environment(served: Served, key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TERMINAL_VARS}
    env["SDAPI_SERVER"] = served.server.url
    if key is not None:
        env["SDAPI_KEY"] = key
    return env


def cli(served: Served, *args: str, key: str | None = "") -> subprocess.CompletedProcess[str]:
    """`python -m sdapi ARGS` with the served key in SDAPI_KEY (or `key`, None for no key)."""
    return subprocess.run(
        [sys.executable, "-m", "sdapi", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=environment(served, served.key if key == "" else key),
        timeout=120,
    )


def job_id(stderr: str) -> int:
    found = re.search(r"^Job (\d+):", stderr, re.MULTILINE)
    assert found, stderr
    return int(found.group(1))


def assert_png(path: Path, size: tuple[int, int] = (64, 64)) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size


def test_generate_saves_the_image_and_prints_path_and_seed(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    done = cli(served, "generate", "a lighthouse at dawn", "-o", str(out), *SMALL, "--seed", "7")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{out}\n", "stdout holds only the saved paths"
    assert_png(out)
    ident = job_id(done.stderr)
    assert done.stderr.startswith(f"Job {ident}: submitted"), "the state as it changes, on stderr"
    assert re.search(rf"^Job {ident}: done in [\d.]+ s, seed 7$", done.stderr, re.MULTILINE)


def test_several_samples_are_numbered_or_go_into_a_directory(
    served: Served, tmp_path: Path
) -> None:
    numbered = cli(
        served, "generate", "twins", "-o", str(tmp_path / "pair.png"), "--samples", "2", *SMALL
    )
    assert numbered.returncode == 0, numbered.stderr
    paths = [tmp_path / "pair-0.png", tmp_path / "pair-1.png"]
    assert numbered.stdout.split() == [str(p) for p in paths]
    folder = tmp_path / "shots"
    into_dir = cli(served, "generate", "twins", "-o", f"{folder}/", "--samples", "2", *SMALL)
    assert into_dir.returncode == 0, into_dir.stderr
    saved = [Path(line) for line in into_dir.stdout.split()]
    assert len(saved) == 2 and all(p.parent == folder for p in saved)
    for path in [*paths, *saved]:
        assert_png(path)


def test_fetch_and_jobs_show_a_finished_job(served: Served, tmp_path: Path) -> None:
    done = cli(served, "generate", "a red kite", "-o", str(tmp_path / "kite.png"), *SMALL)
    ident = job_id(done.stderr)
    fetched = cli(served, "fetch", str(ident), "-o", str(tmp_path / "again.png"))
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stderr.startswith(f"Job {ident}: done in")
    assert fetched.stdout == f"{tmp_path / 'again.png'}\n"
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "kite.png").read_bytes()
    urls = cli(served, "fetch", str(ident), "--no-save")
    assert urls.returncode == 0 and urls.stdout.startswith(f"{served.server.url}/")
    listed = cli(served, "jobs", "--limit", "5")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()[0], _row(listed.stdout, ident)
    assert header.split() == ["id", "status", "prompt", "size", "age", "time"]
    assert row[:5] == [str(ident), "success", "a", "red", "kite"] and "64x64" in row


def _row(table: str, ident: int) -> list[str]:
    rows = [line.split() for line in table.splitlines() if line.split()[:1] == [str(ident)]]
    assert len(rows) == 1, table
    return rows[0]


def test_generate_inpaints_with_an_image_and_a_mask(served: Served, tmp_path: Path) -> None:
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    init.write_bytes(png_bytes())
    mask.write_bytes(png_bytes(color="white"))
    out = tmp_path / "painted.png"
    args = ("--init-image", str(init), "--mask", str(mask), "--strength", "0.5")
    done = cli(served, "generate", "a red door", "-o", str(out), *args, *SMALL)
    assert done.returncode == 0, done.stderr
    assert_png(out)
    listed = served.post("/api/v3/jobs", {"limit": 5})["jobs"]
    assert [j["task"] for j in listed if j["id"] == job_id(done.stderr)] == ["inpaint"]


def test_errors_are_one_line(served: Served, tmp_path: Path) -> None:
    invalid = cli(served, "generate", "", "-o", str(tmp_path / "x.png"))
    assert invalid.returncode == 1
    assert invalid.stderr == "sdapi: prompt: The prompt field is required.\n"
    stranger = cli(served, "jobs", key="not-a-key")
    assert (stranger.returncode, stranger.stderr) == (1, "sdapi: Invalid Api Key\n")
    keyless = cli(served, "fetch", "1", key=None)
    assert keyless.returncode == 2 and len(keyless.stderr.splitlines()) == 1
    unknown = cli(served, "fetch", "999999")
    assert (unknown.returncode, unknown.stderr) == (1, "sdapi: Request not found\n")


def test_ctrl_c_cancels_the_job_when_nobody_can_be_asked(served: Served, tmp_path: Path) -> None:
    busy = ("--width", "512", "--height", "512", "--steps", "40")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sdapi",
            "generate",
            "a long one",
            "-o",
            str(tmp_path / "x.png"),
            *busy,
        ],
        stdin=subprocess.DEVNULL,  # not a TTY: Ctrl-C cancels without asking
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(served, served.key),
    )
    try:
        seen = _read_until(proc, "generating")
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = seen + rest
    ident = job_id(err)
    assert proc.returncode == 130, err
    assert f"Job {ident} cancelled" in err.splitlines(), err
    assert out == "" and not (tmp_path / "x.png").exists()
    assert served.post(f"/api/v3/fetch/{ident}")["status"] == "cancelled"


def _read_until(proc: subprocess.Popen[str], word: str) -> str:
    """stderr up to the first line holding `word` (the process's state lines)."""
    assert proc.stderr is not None
    seen = ""
    for line in proc.stderr:
        seen += line
        if word in line:
            return seen
    raise AssertionError(f"the process ended before {word!r}:\n{seen}")
