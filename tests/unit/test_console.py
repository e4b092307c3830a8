"""The client commands' logic (sdapi.console) with a fake client: no server, no network."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from rich.console import Console

from sdapi import console
from sdapi.cli import main as cli_main
from sdapi.client import (
    ApiError,
    CancelResult,
    JobFailed,
    JobResult,
    JobSummary,
    WaitTimeout,
)
from sdapi.console import Generation, Terminal

URL = "http://sd.test/generations/abc-0.png"


def job(**changes: Any) -> JobResult:
    values: dict[str, Any] = {"id": 7, "status": "processing"}
    values.update(changes)
    return JobResult(**values)


SUBMITTED = job(eta=12.0, meta={"steps": 40, "seed": 42})
QUEUED = job(queue_position=2, progress=0.0, eta=12.0)
RUNNING = job(progress=0.3, eta=5.0)
DONE = job(status="success", output=(URL,), generation_time=1.25, meta={"seed": 42})


@dataclass
class FakeClient:
    """Stands in for sdapi.Client: scripted answers, and a record of every call."""

    updates: list[JobResult] = field(default_factory=lambda: [QUEUED, RUNNING, DONE])
    #: Raised by wait after the updates (KeyboardInterrupt plays Ctrl-C).
    wait_raises: BaseException | None = None
    cancel_answer: CancelResult | ApiError = field(
        default_factory=lambda: CancelResult(id=7, state="cancelled")
    )
    fetches: list[JobResult] = field(default_factory=list)
    summaries: list[JobSummary] = field(default_factory=list)
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def text2img(self, prompt: str, **options: Any) -> JobResult:
        self.calls.append(("text2img", prompt, options))
        return SUBMITTED

    def img2img(self, prompt: str, init_image: Path, **options: Any) -> JobResult:
        self.calls.append(("img2img", prompt, init_image, options))
        return SUBMITTED

    def inpaint(self, prompt: str, init_image: Path, mask: Path, **options: Any) -> JobResult:
        self.calls.append(("inpaint", prompt, init_image, mask, options))
        return SUBMITTED

    def wait(
        self, job: JobResult, *, timeout: float | None, polling: Any, on_update: Callable[..., Any]
    ) -> JobResult:
        self.calls.append(("wait", job.id, timeout))
        for update in self.updates:
            on_update(update)
        if self.wait_raises is not None:
            raise self.wait_raises
        return self.updates[-1]

    def cancel(self, ident: int) -> CancelResult:
        self.calls.append(("cancel", ident))
        if isinstance(self.cancel_answer, ApiError):
            raise self.cancel_answer
        return self.cancel_answer

    def fetch(self, ident: int) -> JobResult:
        self.calls.append(("fetch", ident))
        return self.fetches.pop(0)

    def save(self, result: JobResult, dest: Any) -> list[Path]:
        self.calls.append(("save", dest))
        if isinstance(dest, Path):
            return [dest / url.rsplit("/", 1)[-1] for url in result.output]
        return list(dest)

    def jobs(self, limit: int) -> list[JobSummary]:
        self.calls.append(("jobs", limit))
        return self.summaries

    def called(self, name: str) -> list[tuple[Any, ...]]:
        return [call for call in self.calls if call[0] == name]


@dataclass
class Screen:
    """A Terminal writing to strings, answering its questions from a script."""

    interactive: bool = False
    answers: list[bool | BaseException] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    terminal: bool = False

    def __post_init__(self) -> None:
        self._out, self._err = io.StringIO(), io.StringIO()
        make = dict(width=100, force_terminal=self.terminal, color_system=None)
        self.term = Terminal(
            Console(file=self._out, **make),  # type: ignore[arg-type]
            Console(file=self._err, **make),  # type: ignore[arg-type]
            self.interactive,
            self.confirm,
        )

    def confirm(self, question: str) -> bool:
        self.questions.append(question)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @property
    def out(self) -> str:
        return self._out.getvalue()

    @property
    def err(self) -> str:
        return self._err.getvalue()


@pytest.fixture
def screen() -> Screen:
    return Screen()


def generate(client: FakeClient, screen: Screen, output: str | None = None, **kw: Any) -> int:
    request = Generation(kw.pop("prompt", "a lighthouse"), kw.pop("options", {}), **kw)
    return console.generate(client, screen.term, request, output, None)  # type: ignore[arg-type]


# --- progress text ------------------------------------------------------------------------------


def test_the_status_word_follows_the_job() -> None:
    assert console.status_text(SUBMITTED) == "submitted"
    assert console.status_text(QUEUED) == "queued #2"
    assert console.status_text(RUNNING) == "generating"
    assert console.status_text(job(progress=0.0)) == "generating", "claimed, first step to come"
    assert console.status_text(DONE) == "done"


def test_progress_fields_for_a_queued_and_a_generating_job() -> None:
    queued = console.progress_fields(QUEUED, 40)
    assert queued == {
        "description": "queued #2",
        "total": 40,
        "completed": 0,
        "count": "",
        "eta": "ETA 0:12",
    }
    running = console.progress_fields(RUNNING, 40)
    assert running["description"] == "generating" and running["completed"] == 12
    assert running["count"] == "12/40 steps" and running["eta"] == "ETA 0:05"
    done = console.progress_fields(DONE, 40)
    assert (done["completed"], done["count"], done["eta"]) == (40, "40/40 steps", "")
    unknown = console.progress_fields(RUNNING, None)
    assert (unknown["total"], unknown["completed"], unknown["count"]) == (100, 30, "30%")


def test_progress_lines_say_the_same_in_words() -> None:
    assert console.progress_line(7, QUEUED, 40) == "Job 7: queued #2, ETA 0:12"
    assert console.progress_line(7, RUNNING, 40) == "Job 7: generating 12/40 steps, ETA 0:05"
    assert console.progress_line(7, job(progress=0.5, eta=75), None) == (
        "Job 7: generating 50%, ETA 1:15"
    )
    assert console.progress_line(7, job(progress=0.5, eta=0.0), None) == "Job 7: generating 50%"


def test_a_terminal_gets_a_live_bar_and_a_pipe_gets_lines() -> None:
    live = console.display_for(Screen(terminal=True).term, 7, 40)
    assert isinstance(live, console.LiveDisplay)
    live.update(RUNNING)
    task = live.progress.tasks[0]
    assert (task.description, task.completed, task.total) == ("generating", 12, 40)
    assert task.fields == {"count": "12/40 steps", "eta": "ETA 0:05"}
    assert isinstance(console.display_for(Screen().term, 7, 40), console.LineDisplay)


# --- generate -----------------------------------------------------------------------------------


def test_generate_submits_at_once_shows_each_state_once_and_saves(screen: Screen) -> None:
    client = FakeClient(updates=[SUBMITTED, QUEUED, QUEUED, RUNNING, RUNNING, DONE])
    options = {"width": 64, "height": 64, "steps": 40, "seed": None, "model_id": None}
    assert generate(client, screen, "out.png", options=options) == 0
    assert client.called("text2img") == [
        (
            "text2img",
            "a lighthouse",
            {"width": 64, "height": 64, "steps": 40, "instant_response": True},
        )
    ], "unset options are not sent, so the server's defaults apply"
    assert screen.err.splitlines() == [
        "Job 7: submitted, ETA 0:12",
        "Job 7: queued #2, ETA 0:12",
        "Job 7: generating 12/40 steps, ETA 0:05",
        "Job 7: done in 1.2 s, seed 42",
    ]
    assert client.called("save") == [("save", [Path("out.png")])]
    assert screen.out == "out.png\n", "stdout carries only the saved paths"


def test_generate_from_an_image_is_img2img_and_with_a_mask_inpaint(screen: Screen) -> None:
    client = FakeClient()
    init, mask = Path("in.png"), Path("mask.png")
    assert generate(client, screen, init_image=init, options={"strength": 0.5}) == 0
    assert generate(client, screen, init_image=init, mask=mask) == 0
    assert client.called("img2img") == [
        ("img2img", "a lighthouse", init, {"strength": 0.5, "instant_response": True})
    ]
    assert client.called("inpaint") == [
        ("inpaint", "a lighthouse", init, mask, {"instant_response": True})
    ]


def test_a_mask_without_an_image_is_a_usage_error(screen: Screen) -> None:
    client = FakeClient()
    assert generate(client, screen, mask=Path("mask.png")) == 2
    assert "--mask needs --init-image" in screen.err and client.calls == []


def test_generate_saves_into_the_current_directory_by_default(screen: Screen) -> None:
    client = FakeClient()
    assert generate(client, screen) == 0
    assert client.called("save") == [("save", Path())]
    assert screen.out == "abc-0.png\n"


@pytest.mark.parametrize(
    ("output", "count", "expected"),
    [
        ("out.png", 1, ["out.png"]),
        ("out.png", 3, ["out-0.png", "out-1.png", "out-2.png"]),
        ("shots/out.jpg", 2, ["shots/out-0.jpg", "shots/out-1.jpg"]),
        ("out", 2, ["out-0.png", "out-1.png"]),
        ("out", 1, ["out"]),
    ],
)
def test_output_files_are_numbered_when_there_are_several(
    output: str, count: int, expected: list[str]
) -> None:
    assert console.destination(output, count) == [Path(p) for p in expected]


def test_output_directories_keep_the_servers_names(tmp_path: Path) -> None:
    assert console.destination(None, 2) == Path()
    assert console.destination(str(tmp_path), 1) == tmp_path, "an existing directory"
    assert console.destination("new-dir/", 3) == Path("new-dir"), "a trailing slash"


# --- Ctrl-C -------------------------------------------------------------------------------------


def test_ctrl_c_without_a_tty_cancels_without_asking(screen: Screen) -> None:
    client = FakeClient(updates=[SUBMITTED, QUEUED], wait_raises=KeyboardInterrupt())
    assert generate(client, screen) == 130
    assert client.called("cancel") == [("cancel", 7)] and screen.questions == []
    assert screen.err.splitlines()[-1] == "Job 7 cancelled"
    assert client.called("save") == []


def test_a_running_job_is_watched_until_it_stopped(screen: Screen) -> None:
    client = FakeClient(
        updates=[RUNNING],
        wait_raises=KeyboardInterrupt(),
        cancel_answer=CancelResult(id=7, state="cancelling"),
        fetches=[job(status="cancelled")],
    )
    assert generate(client, screen) == 130
    assert screen.err.splitlines()[-2:] == [
        "Job 7 is stopping at its next step...",
        "Job 7 cancelled",
    ]


def test_ctrl_c_at_a_tty_asks_and_cancels_on_yes() -> None:
    screen = Screen(interactive=True, answers=[True])
    client = FakeClient(updates=[RUNNING], wait_raises=KeyboardInterrupt())
    assert generate(client, screen) == 130
    assert screen.questions == ["Cancel job 7?"] and client.called("cancel") == [("cancel", 7)]


def test_answering_no_leaves_the_job_running_and_says_how_to_fetch_it() -> None:
    screen = Screen(interactive=True, answers=[False])
    client = FakeClient(updates=[RUNNING], wait_raises=KeyboardInterrupt())
    assert generate(client, screen) == 130
    assert client.called("cancel") == []
    assert screen.err.splitlines()[-1] == "Job 7 goes on. Fetch it later with: sdapi fetch 7"


def test_a_second_ctrl_c_at_the_question_quits_at_once() -> None:
    screen = Screen(interactive=True, answers=[KeyboardInterrupt()])
    client = FakeClient(updates=[RUNNING], wait_raises=KeyboardInterrupt())
    assert generate(client, screen) == 130
    assert client.called("cancel") == [] and "sdapi fetch 7" in screen.err


def test_a_job_that_finished_meanwhile_cannot_be_cancelled(screen: Screen) -> None:
    too_late = ApiError("Request already finished", {"state": "success"}, 200)
    client = FakeClient(updates=[RUNNING], wait_raises=KeyboardInterrupt(), cancel_answer=too_late)
    assert generate(client, screen) == 1
    assert screen.err.splitlines()[-1] == (
        "sdapi: Job 7: Request already finished; see it with: sdapi fetch 7"
    )


def test_settle_gives_up_on_a_job_that_keeps_running() -> None:
    client = FakeClient(fetches=[RUNNING] * 10)
    now = [0.0]
    final = console.settle(
        client,  # type: ignore[arg-type]
        7,
        limit=1.0,
        sleep=lambda s: now.__setitem__(0, now[0] + s),
        clock=lambda: now[0],
    )
    assert final is None and len(client.called("fetch")) == 5
    assert console.cancelled_line(7, final) == (
        "Job 7 is still stopping; check it with: sdapi fetch 7"
    )
    assert "ended success" in console.cancelled_line(7, DONE)


# --- errors -------------------------------------------------------------------------------------


def run_main(screen: Screen, command: Callable[..., int], key: str | None = "k") -> int:
    return console.main("http://sd.test", key, command, screen.term)


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            ApiError({"prompt": ["The prompt field is required."]}, {}, 200),
            "sdapi: prompt: The prompt field is required.",
        ),
        (
            ApiError({"width": ["Too wide.", "Not a multiple of 8."], "seed": ["Bad."]}, {}, 200),
            "sdapi: width: Too wide. Not a multiple of 8.; seed: Bad.",
        ),
        (ApiError("Invalid Api Key", {}, 401), "sdapi: Invalid Api Key"),
        (
            JobFailed(job(status="failed", message="Failed, Try Again", raw={"error": "OOM"})),
            "sdapi: Job 7: Failed, Try Again (OOM)",
        ),
        (
            WaitTimeout(RUNNING, 5),
            "sdapi: Job 7 still processing after 5 s; it goes on: sdapi fetch 7",
        ),
        (
            httpx.ConnectError("[Errno 111] Connection refused"),
            "sdapi: no answer from http://sd.test: [Errno 111] Connection refused",
        ),
        (ApiError("a message\non two lines", {}, 200), "sdapi: a message on two lines"),
    ],
)
def test_errors_are_one_line_and_exit_1(screen: Screen, error: Exception, line: str) -> None:
    def fail(client: Any, term: Terminal) -> int:
        raise error

    assert run_main(screen, fail) == 1
    assert screen.err == line + "\n" and screen.out == ""


def test_a_job_that_fails_while_waited_for_exits_1(screen: Screen) -> None:
    failed = job(status="failed", message="Failed, Try Again")
    client = FakeClient(updates=[RUNNING], wait_raises=JobFailed(failed))
    assert run_main(screen, lambda c, t: generate(client, screen)) == 1
    assert screen.err.splitlines()[-1] == "sdapi: Job 7: Failed, Try Again"


def test_a_missing_key_or_a_bad_server_is_a_usage_error(screen: Screen) -> None:
    assert run_main(screen, lambda c, t: 0, key=None) == 2
    assert screen.err.startswith("sdapi: no API key: pass --key or set SDAPI_KEY")
    other = Screen()
    assert console.main("127.0.0.1:7860", "k", lambda c, t: 0, other.term) == 2
    assert "scheme" in other.err and len(other.err.splitlines()) == 1


def test_ctrl_c_outside_the_wait_just_quits(screen: Screen) -> None:
    def interrupted(client: Any, term: Terminal) -> int:
        raise KeyboardInterrupt

    assert run_main(screen, interrupted) == 130 and screen.err == "interrupted\n"


def test_the_cli_says_a_key_is_missing_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDAPI_KEY", raising=False)
    result = CliRunner().invoke(cli_main, ["generate", "a fox"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "sdapi: no API key: pass --key or set SDAPI_KEY (`sdapi keys create` makes one)"
    ]


def test_the_server_commands_do_not_load_rich_or_the_client() -> None:
    code = "import sys, sdapi.cli; assert not {'rich', 'httpx', 'sdapi.console'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- fetch --------------------------------------------------------------------------------------


def test_fetch_saves_a_finished_job(screen: Screen) -> None:
    client = FakeClient(fetches=[DONE])
    assert console.fetch(client, screen.term, 7, "x.png", save=True) == 0  # type: ignore[arg-type]
    assert screen.err == "Job 7: done in 1.2 s, seed 42\n" and screen.out == "x.png\n"


def test_fetch_no_save_prints_the_urls(screen: Screen) -> None:
    client = FakeClient(fetches=[DONE])
    assert console.fetch(client, screen.term, 7, None, save=False) == 0  # type: ignore[arg-type]
    assert screen.out == URL + "\n" and client.called("save") == []


@pytest.mark.parametrize(
    ("answer", "line", "code"),
    [
        (QUEUED, "Job 7: queued #2, ETA 0:12", 0),
        (RUNNING, "Job 7: generating 30%, ETA 0:05", 0),
        (job(status="failed", message="Failed, Try Again"), "Job 7: Failed, Try Again", 1),
        (job(status="cancelled", message="Request cancelled"), "Job 7: Request cancelled", 1),
    ],
)
def test_fetch_shows_where_an_unfinished_job_stands(
    screen: Screen, answer: JobResult, line: str, code: int
) -> None:
    client = FakeClient(fetches=[answer])
    assert console.fetch(client, screen.term, 7, None, save=True) == code  # type: ignore[arg-type]
    assert screen.err == line + "\n" and screen.out == "" and client.called("save") == []


# --- jobs ---------------------------------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.fixture
def summaries() -> Iterator[list[JobSummary]]:
    yield [
        JobSummary(
            id=12,
            status="processing",
            prompt="a [bold]lighthouse[/bold] at dawn, volumetric light, highly detailed",
            width=512,
            height=512,
            samples=2,
            created_at=NOW - 30,
            started_at=NOW - 20,
            progress=0.45,
        ),
        JobSummary(
            id=11,
            status="success",
            prompt="a fox",
            width=64,
            height=64,
            samples=1,
            created_at=NOW - 3 * 3600,
            generation_time=1.25,
        ),
        JobSummary(id=10, status="failed", prompt="x", created_at=NOW - 2 * 86400),
    ]


def test_jobs_prints_a_table_of_the_keys_jobs(screen: Screen, summaries: list[JobSummary]) -> None:
    client = FakeClient(summaries=summaries)
    code = console.jobs(client, screen.term, 3, now=lambda: NOW)  # type: ignore[arg-type]
    assert code == 0 and client.called("jobs") == [("jobs", 3)]
    lines = [line.split() for line in screen.out.splitlines()]
    assert lines[0] == ["id", "status", "prompt", "size", "age", "time"]
    assert lines[2][:3] == ["12", "processing", "45%"]
    assert "a [bold]lighthouse[/bold] at dawn, volu…" in screen.out, "no markup"
    assert lines[2][-6:] == ["512x512", "x2", "30s", "ago", "20", "s"]
    assert lines[3] == ["11", "success", "a", "fox", "64x64", "3h", "ago", "1.2", "s"]
    assert lines[4] == ["10", "failed", "x", "2d", "ago"]


def test_jobs_says_when_there_are_none(screen: Screen) -> None:
    assert console.jobs(FakeClient(), screen.term, 20) == 0  # type: ignore[arg-type]
    assert screen.err == "No jobs yet for this key.\n" and screen.out == ""


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-2, "0s ago"), (59, "59s ago"), (60, "1m ago"), (7200, "2h ago"), (90000, "1d ago")],
)
def test_ages(seconds: float, text: str) -> None:
    assert console.age_text(seconds) == text


def test_long_prompts_are_shortened_on_one_line() -> None:
    assert console.shorten("short", 10) == "short"
    assert console.shorten("a\nlong   prompt here", 10) == "a long pr…"
