"""The client commands for people: `sdapi generate`, `sdapi fetch` and `sdapi jobs`.

Results (saved paths, URLs, the jobs table) go to stdout, so scripts can read them; progress,
state and errors go to stderr. A terminal gets a live rich progress bar; a pipe or a log gets
one line per change of state instead, because a live bar would only show up at the very end.
cli.py imports this module inside the commands, so `sdapi serve` never loads rich.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from sdapi.client import (
    ApiError,
    Client,
    ClientError,
    Destination,
    JobCancelled,
    JobFailed,
    JobResult,
    JobSummary,
    Polling,
    WaitTimeout,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: What shells report for a program ended by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: A person watches the bar, so poll about once a second; fetch is cheap for the server.
LIVE_POLLING = Polling(minimum=0.25, maximum=1.0, first=0.25, factor=1.5)
#: How long to watch a cancelled running job reach `cancelled` (it stops at its next step).
SETTLE_S = 15.0
SETTLE_POLL_S = 0.25
PROMPT_CHARS = 40
STATUS_STYLES = {
    "success": "green",
    "failed": "red",
    "cancelled": "yellow",
    "expired": "dim",
    "queued": "cyan",
    "processing": "cyan",
}


@dataclass
class Terminal:
    """Where the commands write, and whether there is a person to ask."""

    out: Console
    err: Console
    #: stdin is a TTY: Ctrl-C may ask before cancelling. Otherwise nobody could answer.
    interactive: bool
    #: Asks a yes/no question (default yes); raises KeyboardInterrupt on a second Ctrl-C.
    confirm: Callable[[str], bool]

    @classmethod
    def create(cls) -> Terminal:
        return cls(Console(), Console(stderr=True), _stdin_is_tty(), _confirm)

    def result(self, text: str) -> None:
        # No markup, no wrapping: a path with brackets or a long URL must come out verbatim.
        self.out.print(text, markup=False, highlight=False, soft_wrap=True)

    def note(self, text: str, style: str | None = None) -> None:
        self.err.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    def error(self, text: str) -> None:
        self.note(text, style="red")


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # stdin closed
        return False


def _confirm(question: str) -> bool:
    import click

    try:
        return click.confirm(question, default=True, err=True)
    except click.Abort:  # click turns Ctrl-C and EOF at its prompt into Abort
        raise KeyboardInterrupt from None


@dataclass(frozen=True)
class Generation:
    """What `sdapi generate` asks for. Options set to None are not sent (server defaults)."""

    prompt: str
    options: Mapping[str, Any]
    init_image: Path | None = None
    mask: Path | None = None


# --- entry --------------------------------------------------------------------------------------

Command = Callable[[Client, Terminal], int]


def main(server: str, key: str | None, command: Command, term: Terminal | None = None) -> int:
    """Run one command against `server`; its exit status. Every error is one line on stderr."""
    term = term or Terminal.create()
    if not key:
        term.error("sdapi: no API key: pass --key or set SDAPI_KEY (`sdapi keys create` makes one)")
        return EXIT_USAGE
    try:
        client = Client(server, key)
    except ValueError as exc:  # a --server without a scheme
        term.error(f"sdapi: {exc}")
        return EXIT_USAGE
    with client:
        return run(term, server, lambda: command(client, term))


def run(term: Terminal, server: str, action: Callable[[], int]) -> int:
    try:
        return action()
    except KeyboardInterrupt:
        term.error("interrupted")
        return EXIT_INTERRUPTED
    except (ClientError, httpx.HTTPError, OSError, ValueError) as exc:
        term.error(error_text(exc, server))
        return EXIT_FAILED


def error_text(exc: BaseException, server: str) -> str:
    """One line: the server's message (field errors as `field: message`), or what went wrong."""
    if isinstance(exc, httpx.HTTPError):
        text = f"no answer from {server}: {exc or type(exc).__name__}"
    elif isinstance(exc, WaitTimeout):
        text = f"{exc}; it goes on: sdapi fetch {exc.result.id}"
    else:
        text = str(exc) or type(exc).__name__
    return "sdapi: " + " ".join(text.split())


# --- generate -----------------------------------------------------------------------------------


def generate(
    client: Client, term: Terminal, job: Generation, output: str | None, timeout: float | None
) -> int:
    """Submit, show progress until done, save; Ctrl-C offers to cancel the job."""
    if job.mask is not None and job.init_image is None:
        term.error("sdapi: --mask needs --init-image (the image the mask applies to)")
        return EXIT_USAGE
    submitted = submit(client, job)
    try:
        done = watch(client, term, submitted, timeout)
    except KeyboardInterrupt:
        return interrupted(client, term, submitted.id)
    paths = client.save(done, destination(output, len(done.output)))
    term.note(finished_line(done))
    for path in paths:
        term.result(str(path))
    return EXIT_OK


def submit(client: Client, job: Generation) -> JobResult:
    # instant_response: the answer comes at once, so the bar shows the queue from the start.
    options = {name: value for name, value in job.options.items() if value is not None}
    if job.init_image is None:
        return client.text2img(job.prompt, instant_response=True, **options)
    if job.mask is None:
        return client.img2img(job.prompt, job.init_image, instant_response=True, **options)
    return client.inpaint(job.prompt, job.init_image, job.mask, instant_response=True, **options)


def watch(client: Client, term: Terminal, job: JobResult, timeout: float | None) -> JobResult:
    steps = job.meta.get("steps")
    steps = steps if isinstance(steps, int) and steps > 0 else None
    with display_for(term, job.id, steps) as display:
        return client.wait(job, timeout=timeout, polling=LIVE_POLLING, on_update=display.update)


def destination(output: str | None, count: int) -> Destination:
    """Where `count` images go: a directory (under the server's file names) when `output` is
    none, an existing directory or ends with a slash; else the file, numbered when several."""
    if output is None:
        return Path()
    if output.endswith(("/", os.sep)) or Path(output).is_dir():
        return Path(output)
    path = Path(output)
    if count == 1:
        return [path]
    suffix = path.suffix or ".png"
    return [path.with_name(f"{path.stem}-{i}{suffix}") for i in range(count)]


# --- Ctrl-C -------------------------------------------------------------------------------------


def interrupted(client: Client, term: Terminal, ident: int | None) -> int:
    """The first Ctrl-C: cancel the job, or leave it running and say how to get it later.
    Another Ctrl-C from here on ends the program at once."""
    try:
        if cancel_choice(term, ident):
            return cancel(client, term, ident)
        term.note(f"Job {ident} goes on. Fetch it later with: sdapi fetch {ident}")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def cancel_choice(term: Terminal, ident: int | None) -> bool:
    """Whether to cancel; a second Ctrl-C at the question means "just quit" (the job goes on)."""
    if not term.interactive:
        # A script or CI job that is interrupted does not want its GPU time spent anyway.
        return True
    try:
        return term.confirm(f"Cancel job {ident}?")
    except (KeyboardInterrupt, EOFError):
        term.note("")  # end the question's line
        return False


def cancel(client: Client, term: Terminal, ident: int | None) -> int:
    try:
        answer = client.cancel(ident or 0)
    except ApiError as exc:  # it ended meanwhile ("Request already finished")
        term.error(f"sdapi: Job {ident}: {exc}; see it with: sdapi fetch {ident}")
        return EXIT_FAILED
    final = None
    if answer.state == "cancelling":
        term.note(f"Job {ident} is stopping at its next step...")
        final = settle(client, ident or 0)
    elif answer.state == "cancelled":
        final = JobResult(id=ident, status="cancelled")
    term.note(cancelled_line(ident, final), style="yellow")
    return EXIT_INTERRUPTED


def settle(
    client: Client,
    ident: int,
    *,
    limit: float = SETTLE_S,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> JobResult | None:
    """The job's final state once it left `processing`; None if it had not within `limit`."""
    deadline = clock() + limit
    while True:
        result = client.fetch(ident)
        if not result.pending:
            return result
        if clock() >= deadline:
            return None
        sleep(SETTLE_POLL_S)


def cancelled_line(ident: int | None, final: JobResult | None) -> str:
    if final is None:
        return f"Job {ident} is still stopping; check it with: sdapi fetch {ident}"
    if final.status == "cancelled":
        return f"Job {ident} cancelled"
    return f"Job {ident} ended {final.status} before it could stop: sdapi fetch {ident}"


# --- progress -----------------------------------------------------------------------------------


def status_text(result: JobResult) -> str:
    """The state word of the progress line: `queued #3`, `generating`, `done`."""
    if result.queue_position is not None:
        return f"queued #{result.queue_position}"
    if result.succeeded:
        return "done"
    if result.progress is None:  # only the submit answer has none: no fetch yet
        return "submitted"
    return "generating"


def count_text(result: JobResult, steps: int | None) -> str:
    """`12/40 steps` while generating (a percentage when the step count is unknown)."""
    if result.queue_position is not None or (result.progress is None and not result.succeeded):
        return ""
    fraction = 1.0 if result.succeeded else min(max(result.progress or 0.0, 0.0), 1.0)
    if steps is None:
        return f"{fraction:.0%}"
    return f"{round(fraction * steps)}/{steps} steps"


def eta_text(result: JobResult) -> str:
    if not result.pending or result.eta is None or result.eta < 0.5:
        return ""  # an ETA of 0:00 while still waiting says nothing
    seconds = max(round(result.eta), 0)
    return f"ETA {seconds // 60}:{seconds % 60:02d}"


def progress_fields(result: JobResult, steps: int | None) -> dict[str, Any]:
    """The rich task fields one answer sets."""
    total = steps or 100
    fraction = 1.0 if result.succeeded else min(max(result.progress or 0.0, 0.0), 1.0)
    return {
        "description": status_text(result),
        "total": total,
        "completed": round(fraction * total),
        "count": count_text(result, steps),
        "eta": eta_text(result),
    }


def progress_line(ident: int | None, result: JobResult, steps: int | None) -> str:
    """The same facts as the bar, as one line of text: `Job 7: queued #2, ETA 0:12`."""
    parts = [f"{status_text(result)} {count_text(result, steps)}".strip(), eta_text(result)]
    return f"Job {ident}: " + ", ".join(part for part in parts if part)


class LiveDisplay:
    """A rich progress bar: state, bar, steps, the server's ETA and the time so far."""

    def __init__(self, console: Console, ident: int | None, steps: int | None) -> None:
        self.steps = steps
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn(f"Job {ident}"),
            TextColumn("[bold]{task.description:<10}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[eta]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task("submitted", total=steps or 100, count="", eta="")

    def __enter__(self) -> LiveDisplay:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()

    def update(self, result: JobResult) -> None:
        self.progress.update(self.task, **progress_fields(result, self.steps))


class LineDisplay:
    """For pipes and logs: one line each time the state changes (queued #2, generating, done)."""

    def __init__(self, term: Terminal, ident: int | None, steps: int | None) -> None:
        self.term, self.ident, self.steps = term, ident, steps
        self.shown = ""

    def __enter__(self) -> LineDisplay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def update(self, result: JobResult) -> None:
        state = status_text(result)
        # The end gets its own line (finished_line), with the time it took and the seed.
        if state != self.shown and not result.succeeded:
            self.shown = state
            self.term.note(progress_line(self.ident, result, self.steps))


def display_for(term: Terminal, ident: int | None, steps: int | None) -> LiveDisplay | LineDisplay:
    if term.err.is_terminal and not term.err.is_dumb_terminal:
        return LiveDisplay(term.err, ident, steps)
    return LineDisplay(term, ident, steps)


def seconds_text(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def finished_line(done: JobResult) -> str:
    took = f" in {seconds_text(done.generation_time)}" if done.generation_time is not None else ""
    seed = done.meta.get("seed")
    return f"Job {done.id}: done{took}" + (f", seed {seed}" if seed is not None else "")


# --- fetch --------------------------------------------------------------------------------------


def fetch(client: Client, term: Terminal, ident: int, output: str | None, save: bool) -> int:
    """Show where a job stands; save its images once it succeeded (or only print the URLs)."""
    result = client.fetch(ident)
    term.note(state_line(result))
    if not result.succeeded:
        return EXIT_OK if result.pending else EXIT_FAILED
    if not save:
        for url in result.output:
            term.result(url)
        return EXIT_OK
    for path in client.save(result, destination(output, len(result.output))):
        term.result(str(path))
    return EXIT_OK


def state_line(result: JobResult) -> str:
    if result.succeeded:
        return finished_line(result)
    if result.pending:
        return progress_line(result.id, result, None)
    if result.status == "failed":
        return str(JobFailed(result))
    if result.status == "cancelled":
        return str(JobCancelled(result))
    return f"Job {result.id}: {result.status}"


# --- jobs ---------------------------------------------------------------------------------------


def jobs(client: Client, term: Terminal, limit: int, now: Callable[[], float] = time.time) -> int:
    """A table of the key's newest jobs."""
    found = client.jobs(limit=limit)
    if not found:
        term.note("No jobs yet for this key.")
        return EXIT_OK
    term.out.print(jobs_table(found, now()))
    return EXIT_OK


def jobs_table(found: Sequence[JobSummary], now: float) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("id", justify="right")
    table.add_column("status", no_wrap=True)
    table.add_column("prompt", overflow="ellipsis", no_wrap=True)
    table.add_column("size", no_wrap=True)
    table.add_column("age", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    for job in found:
        table.add_row(*job_row(job, now))
    return table


def job_row(job: JobSummary, now: float) -> tuple[Text, ...]:
    # Text, not str: a prompt like "a [red] door" must not be read as rich markup.
    return (
        Text(str(job.id)),
        Text(status_label(job), style=STATUS_STYLES.get(job.status, "")),
        Text(shorten(job.prompt, PROMPT_CHARS)),
        Text(size_text(job)),
        Text(age_text(now - job.created_at) if job.created_at is not None else ""),
        Text(duration_text(job, now)),
    )


def status_label(job: JobSummary) -> str:
    if job.status == "processing" and job.progress is not None:
        return f"processing {job.progress:.0%}"
    return job.status


def shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def size_text(job: JobSummary) -> str:
    if job.width is None or job.height is None:
        return ""
    many = f" x{job.samples}" if job.samples and job.samples > 1 else ""
    return f"{job.width}x{job.height}{many}"


def age_text(seconds: float) -> str:
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def duration_text(job: JobSummary, now: float) -> str:
    """How long it generated; for a running job, how long it has been running so far."""
    if job.generation_time is not None:
        return seconds_text(job.generation_time)
    if job.started_at is None:
        return ""
    end = job.finished_at if job.finished_at is not None else now
    return seconds_text(max(end - job.started_at, 0.0))
