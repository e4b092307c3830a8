"""Typed results: frozen snapshots of one server answer, with the raw JSON kept beside them.

Parsing is lenient on purpose: the real v3 API sends `id: ""` and `output: ""` on failures and
string numbers elsewhere, and a typed client that breaks on those is worse than none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdapi.client._errors import Message

#: Job statuses on the wire; `processing` is the only one that is not final.
SUCCESS, PROCESSING, FAILED, CANCELLED = "success", "processing", "failed", "cancelled"
#: Only job lists (`jobs()`) tell a queued job from a running one.
QUEUED = "queued"


@dataclass(frozen=True, slots=True)
class JobResult:
    """Where a job stands: the answer of a generation call, of fetch, or of `wait`."""

    #: The job id (None only in the real API's `failed` answers, which send "").
    id: int | None
    #: "success", "processing", "failed" or "cancelled".
    status: str
    #: Image URLs (empty until success). Names ending in `.base64` hold base64 PNG text.
    output: tuple[str, ...] = ()
    #: Seconds the server expects until the job is done (processing answers only).
    eta: float | None = None
    #: 0..1 while running (fetch answers only).
    progress: float | None = None
    #: 1 = next in line (fetch answers of queued jobs only).
    queue_position: int | None = None
    #: Seconds the generation took (success only).
    generation_time: float | None = None
    #: The parameters the server used (prompt, seed, steps, ...).
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: The server's message, if any (`message`, or the v3 spelling `messege`).
    message: Message | None = field(default=None, hash=False)
    #: Where the images will appear once the job succeeds.
    future_links: tuple[str, ...] = ()
    #: The whole JSON answer, for fields this class does not name (not part of equality).
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCESS

    @property
    def pending(self) -> bool:
        """True while the job may still produce images (queued or running)."""
        return self.status == PROCESSING

    @classmethod
    def from_answer(cls, body: Mapping[str, Any]) -> JobResult:
        return cls(
            id=_int(body.get("id")),
            status=str(body.get("status", "")),
            output=_urls(body.get("output")),
            eta=_float(body.get("eta")),
            progress=_float(body.get("progress")),
            queue_position=_int(body.get("queue_position")),
            generation_time=_float(body.get("generationTime")),
            meta=_dict(body.get("meta")),
            message=message_of(body),
            future_links=_urls(body.get("future_links")),
            raw=dict(body),
        )


@dataclass(frozen=True, slots=True)
class CancelResult:
    """A cancel that was accepted: `cancelled` (it was queued) or `cancelling` (it is running
    and stops at its next step; fetch answers `cancelled` about a second later)."""

    id: int | None
    state: str
    message: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_answer(cls, body: Mapping[str, Any]) -> CancelResult:
        message = message_of(body)
        return cls(
            id=_int(body.get("id")),
            state=str(body.get("state", "")),
            message=message if isinstance(message, str) else None,
            raw=dict(body),
        )


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One line of `jobs()`: a job of this key, whatever its status, with its main parameters."""

    id: int | None
    #: "queued", "processing", "success", "failed", "cancelled" or "expired" (outputs removed).
    status: str
    #: "text2img", "img2img" or "inpaint".
    task: str = ""
    prompt: str = ""
    model: str | None = None
    width: int | None = None
    height: int | None = None
    samples: int | None = None
    steps: int | None = None
    seed: int | None = None
    #: Unix times (seconds); started and finished are None until the job gets there.
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    #: 0..1 while running.
    progress: float | None = None
    #: Seconds the generation took (success only).
    generation_time: float | None = None
    #: Image URLs (success only).
    output: tuple[str, ...] = ()
    #: Why the job failed, if it did.
    error: str | None = None
    track_id: str | None = None
    webhook_status: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def pending(self) -> bool:
        """True while the job may still produce images (queued or running)."""
        return self.status in (QUEUED, PROCESSING)

    @classmethod
    def from_answer(cls, body: Mapping[str, Any]) -> JobSummary:
        return cls(
            id=_int(body.get("id")),
            status=str(body.get("status", "")),
            task=str(body.get("task") or ""),
            prompt=str(body.get("prompt") or ""),
            model=_str(body.get("model")),
            width=_int(body.get("width")),
            height=_int(body.get("height")),
            samples=_int(body.get("samples")),
            steps=_int(body.get("steps")),
            seed=_int(body.get("seed")),
            created_at=_float(body.get("created_at")),
            started_at=_float(body.get("started_at")),
            finished_at=_float(body.get("finished_at")),
            progress=_float(body.get("progress")),
            generation_time=_float(body.get("generationTime")),
            output=_urls(body.get("output")),
            error=_str(body.get("error")),
            track_id=_str(body.get("track_id")),
            webhook_status=_str(body.get("webhook_status")),
            raw=dict(body),
        )


@dataclass(frozen=True, slots=True)
class SystemLoad:
    """Queue depth: jobs queued or running, and the seconds the server needs to drain them."""

    queue_num: int
    queue_time: float
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_answer(cls, body: Mapping[str, Any]) -> SystemLoad:
        return cls(
            queue_num=_int(body.get("queue_num")) or 0,
            queue_time=_float(body.get("queue_time")) or 0.0,
            raw=dict(body),
        )


@dataclass(frozen=True, slots=True)
class Polling:
    """How `wait` paces its fetches: about the server's eta, clamped to [minimum, maximum];
    without an eta it starts at `first` and grows by `factor` each time, so a silent server
    is not hammered."""

    minimum: float = 0.5
    maximum: float = 10.0
    first: float = 1.0
    factor: float = 1.5

    def delay(self, eta: float | None, misses: int) -> float:
        """Seconds to sleep before the next fetch; `misses` counts answers without an eta."""
        guess = eta if eta is not None and eta > 0 else self.first * self.factor**misses
        return min(max(guess, self.minimum), self.maximum)


def message_of(body: Mapping[str, Any]) -> Message | None:
    """`message`, or the v3 spelling `messege` (spec 11.1) when only that one is there."""
    for name in ("message", "messege"):
        value = body.get(name)
        if isinstance(value, str | Mapping) and value:
            return value
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return str(value) if value is not None and value != "" else None


def _urls(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list | tuple):
        return tuple(str(url) for url in value if url)
    return ()


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}
