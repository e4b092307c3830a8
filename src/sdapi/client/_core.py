"""What the sync and async clients share: building requests, reading answers, pacing `wait`,
and turning outputs into files. No I/O happens here, so both clients stay thin loops.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from sdapi import __version__
from sdapi.client._errors import ApiError, JobCancelled, JobFailed, ProtocolError, WaitTimeout
from sdapi.client._models import (
    CANCELLED,
    FAILED,
    PROCESSING,
    SUCCESS,
    JobResult,
    JobSummary,
    Polling,
    message_of,
)

#: An input image: a URL / data URI / base64 string, a path to a file, or the file's bytes.
ImageInput = str | bytes | os.PathLike[str]
#: Where `save` writes: a directory, or one path per output.
Destination = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
#: `wait`'s progress callback: called with every answer, the final one included.
OnUpdate = Callable[[JobResult], object]

API_PREFIX = "/api/v3"
HEADERS = {"User-Agent": f"sdapi-client/{__version__}", "Accept": "application/json"}
#: Generation calls may block for the server's sync window (10 s by default, 300 s at most).
DEFAULT_TIMEOUT_S = 120.0
BASE64_SUFFIX = ".base64"
#: Keyword arguments of the generation methods that are not wire fields.
_NOT_FIELDS = frozenset({"self", "wait", "extra"})
#: Flags the v3 wire spells "yes"/"no" (instant_response comes from v6, where it is a boolean).
_YES_NO_FLAGS = frozenset({"base64", "temp"})
_IMAGE_FIELDS = frozenset({"init_image", "mask_image"})
#: Longer strings are image data, not file names: no need to ask the file system.
_MAX_PATH_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Call:
    """One POST: the path under the base URL and its JSON body (the key included)."""

    path: str
    body: dict[str, Any]


class Common:
    """State and request building shared by `Client` and `AsyncClient`."""

    def __init__(self, base_url: str, key: str, polling: Polling | None) -> None:
        self.base_url = normalize_base(base_url)
        self.key = key
        self.polling = polling or Polling()

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def call(self, path: str, fields: Mapping[str, Any] | None = None) -> Call:
        return Call(f"{API_PREFIX}/{path}", {"key": self.key, **(fields or {})})

    def generation(self, task: str, arguments: Mapping[str, Any]) -> Call:
        return self.call(task, generation_fields(arguments))

    def job_call(self, verb: str, job: int | JobResult) -> Call:
        return self.call(f"{verb}/{job_id(job)}")


def normalize_base(base_url: str) -> str:
    """`http://host:7860`, with or without a trailing slash or `/api/v3`: callers paste both."""
    base = base_url.strip().rstrip("/")
    if base.endswith(API_PREFIX):
        base = base[: -len(API_PREFIX)]
    if not urlsplit(base).scheme:
        raise ValueError(f"base_url needs a scheme, like http://127.0.0.1:7860: {base_url!r}")
    return base


def job_id(job: int | JobResult) -> int:
    value = job.id if isinstance(job, JobResult) else job
    if value is None:
        raise ValueError("this result has no job id (the server did not send one)")
    return int(value)


def generation_fields(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON fields of a generation call, from a generation method's arguments.

    The methods pass their `locals()`, so one function knows the wire spelling of every keyword
    (instead of six signatures each repeating a dict of the same eighteen names). None means
    "not sent": the server applies its defaults.
    """
    named = {k: v for k, v in arguments.items() if k not in _NOT_FIELDS}
    extra = arguments.get("extra") or {}
    fields: dict[str, Any] = {}
    for name, value in {**named, **extra}.items():
        if value is None:
            continue
        wire = "num_inference_steps" if name == "steps" else name
        fields[wire] = _wire_value(name, value)
    return fields


def _wire_value(name: str, value: Any) -> Any:
    if name in _IMAGE_FIELDS:
        return encode_image(value)
    if name in _YES_NO_FLAGS and isinstance(value, bool):
        return "yes" if value else "no"
    return value


def encode_image(value: ImageInput) -> str:
    """A string goes as it is (URL, data URI or base64) unless it names an existing file;
    bytes and files go as base64, which the server accepts in place of a URL."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, os.PathLike) or _names_a_file(value):
        return base64.b64encode(Path(value).read_bytes()).decode("ascii")
    return value


def _names_a_file(text: str) -> bool:
    if len(text) > _MAX_PATH_CHARS or "://" in text or text.startswith("data:"):
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long for the OS, a NUL byte: not a file
        return False


def read_answer(status_code: int, content: bytes) -> dict[str, Any]:
    """The JSON object of an answer; `ApiError` when the server said no.

    Errors come as HTTP 200 with `status: "error"` by default, or as 4xx with the same body
    when the server runs with --http-errors: both read the same here.
    """
    body = _json_object(content)
    if body is None:
        snippet = content[:200].decode("utf-8", "replace")
        raise ProtocolError(f"HTTP {status_code}, not a JSON object: {snippet!r}", status_code)
    if body.get("status") == "error" or status_code >= 400:
        message = message_of(body) or body.get("detail") or f"HTTP {status_code}"
        raise ApiError(message, body, status_code)
    return body


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def submitted(body: Mapping[str, Any]) -> JobResult:
    """A generation call's answer: the job, done or under way; raises if it already ended
    without images (the caller asked for images, so that is an error)."""
    result = JobResult.from_answer(body)
    is_pending(result)
    return result


def job_list(body: Mapping[str, Any]) -> list[JobSummary]:
    """The answer of `jobs`: the key's jobs, newest first."""
    jobs = body.get("jobs")
    if not isinstance(jobs, list):
        raise ProtocolError("the jobs answer has no `jobs` list", 200)
    return [JobSummary.from_answer(job) for job in jobs if isinstance(job, Mapping)]


def is_pending(result: JobResult) -> bool:
    """True while processing, False on success; raises for the endings without images."""
    if result.status == SUCCESS:
        return False
    if result.status == PROCESSING:
        return True
    if result.status == FAILED:
        raise JobFailed(result)
    if result.status == CANCELLED:
        raise JobCancelled(result)
    raise ProtocolError(f"unknown job status {result.status!r}", 200)


class Waiter:
    """Paces `wait`: how long to sleep after each answer, and when to give up."""

    def __init__(self, polling: Polling, timeout: float | None, clock: Callable[[], float]) -> None:
        self.polling = polling
        self.timeout = timeout
        self.clock = clock
        self.deadline = None if timeout is None else clock() + timeout
        self.misses = 0

    def next_delay(self, result: JobResult, on_update: OnUpdate | None) -> float | None:
        """Seconds to sleep before fetching again; None once the job succeeded. Raises for
        failed/cancelled jobs and when the timeout has passed."""
        if on_update is not None:
            on_update(result)
        if not is_pending(result):
            return None
        delay = self.polling.delay(result.eta, self.misses)
        self.misses = 0 if result.eta else self.misses + 1
        if self.deadline is None:
            return delay
        left = self.deadline - self.clock()
        if left <= 0:
            raise WaitTimeout(result, self.timeout or 0.0)
        return min(delay, left)


def save_plan(result: JobResult, dest: Destination) -> list[tuple[str, Path]]:
    """Which output URL goes to which file: into a directory under the URL's own name, or to
    the given paths in order."""
    if not result.output:
        raise ValueError(f"job {result.id} has no outputs to save (status {result.status!r})")
    if isinstance(dest, str | os.PathLike):
        folder = Path(dest)
        return [(url, folder / file_name(url)) for url in result.output]
    paths = [Path(p) for p in dest]
    if len(paths) != len(result.output):
        raise ValueError(f"{len(result.output)} outputs but {len(paths)} paths to save them to")
    return list(zip(result.output, paths, strict=True))


def file_name(url: str) -> str:
    """The URL's file name; a base64 output is saved as the PNG it decodes to."""
    name = PurePosixPath(urlsplit(url).path).name or "image.png"
    if name.endswith(BASE64_SUFFIX):
        name = name[: -len(BASE64_SUFFIX)]
        if not name.lower().endswith(".png"):
            name += ".png"
    return name


def downloaded(url: str, status_code: int, content: bytes) -> bytes:
    """The image bytes behind an output URL: as served, or decoded from base64 text."""
    if status_code >= 400:
        raise ProtocolError(f"downloading {url} failed: HTTP {status_code}", status_code)
    if not urlsplit(url).path.endswith(BASE64_SUFFIX):
        return content
    return decode_base64_text(content, url)


def decode_base64_text(content: bytes, url: str = "") -> bytes:
    """Base64 text (padding and line breaks optional, a data: URI prefix tolerated)."""
    text = content.decode("ascii", "replace").strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{url or 'output'}: not valid base64 text", 200) from None


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def write_file(path: Path, data: bytes) -> Path:
    """Write all or nothing: a crash never leaves half an image under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        # mkstemp makes the file 0600; a saved image gets the mode any new file would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
