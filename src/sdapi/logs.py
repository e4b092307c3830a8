"""Logging: one line per event, as text or JSON, carrying the ids of the jobs it concerns.

Code that works for jobs wraps that work in `job_context(ids)`; every line logged inside it,
by any module, then carries `job=12` (text) or `"job_id": 12` (JSON), so one grep or one query
follows a job through the API, the worker and the webhook dispatcher. The ids live in a
contextvar: threads started for that work inherit them when started with `in_context`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

_JOBS: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar("sdapi_jobs", default=())

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s%(jobs)s: %(message)s"
#: Libraries whose chatter at INFO is noise in a server's log.
QUIET = ("httpx", "httpcore")


@contextmanager
def job_context(ids: Iterable[int]) -> Iterator[None]:
    token = _JOBS.set(tuple(ids))
    try:
        yield
    finally:
        _JOBS.reset(token)


def in_context(target: Callable[[], Any], name: str) -> threading.Thread:
    """A daemon thread running `target` with the caller's job ids (threads start without)."""
    context = contextvars.copy_context()
    return threading.Thread(target=context.run, args=(target,), name=name, daemon=True)


class _JobIds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ids = _JOBS.get()
        record.job_ids = ids
        record.jobs = f" job={ids[0]}" if len(ids) == 1 else f" jobs={','.join(map(str, ids))}"
        if not ids:
            record.jobs = ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        ids: tuple[int, ...] = getattr(record, "job_ids", ())
        if len(ids) == 1:
            line["job_id"] = ids[0]
        elif ids:
            line["job_ids"] = list(ids)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, fmt: str = "text") -> None:
    """Root logging to stderr in `fmt` ("text" or "json"); every logger propagates to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_JobIds())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
