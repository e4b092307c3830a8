"""Prometheus metrics: what is counted, and the text exposition format.

Two kinds of sample feed GET /metrics:
- deployment-wide ones, kept in the database's `metrics` table and added to in the same
  transaction as the event they count (a job ending, a webhook attempt, a batch run), so any API
  replica reports every worker's work, exactly once, across restarts;
- per-process ones (HTTP latency), kept in memory by each API process.
A sample is (name, rendered labels, value); histograms are cumulative `_bucket` samples plus
`_sum` and `_count`, as Prometheus expects.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

Sample = tuple[str, str, float]

#: Seconds buckets: a 64 px CPU job takes 0.1 s, a 1024 px one minutes.
SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: HTTP answers: most in milliseconds, a generation call up to its sync window.
HTTP_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Images per batch: the batch sizes workers use are powers of two.
IMAGES = (1, 2, 4, 8, 16, 32, 64)

#: name -> (type, help) for every family exposed.
FAMILIES = {
    "sdapi_jobs_finished_total": ("counter", "Jobs that ended, by final status."),
    "sdapi_generation_seconds": ("histogram", "Generation time of successful jobs."),
    "sdapi_batch_images": ("histogram", "Images generated together in one batch."),
    "sdapi_webhook_deliveries_total": ("counter", "Webhook delivery attempts, by outcome."),
    "sdapi_queue_jobs": ("gauge", "Jobs in the queue, by state."),
    "sdapi_workers_live": ("gauge", "Workers seen in the last 30 seconds."),
    "sdapi_http_request_seconds": ("histogram", "HTTP answer time of this API process."),
}


def labels(**values: object) -> str:
    """A label set as exposed: `a="1",b="x"`, values escaped per the text format."""
    return ",".join(f'{name}="{_escape(str(value))}"' for name, value in values.items())


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def counter(name: str, value: float = 1.0, **label_values: object) -> list[Sample]:
    return [(name, labels(**label_values), value)]


def histogram(
    name: str, value: float, buckets: Sequence[float], **label_values: object
) -> list[Sample]:
    """The samples one observation adds: every bucket (1 where it falls, else 0, so each
    bucket exists from the first observation), +Inf, sum and count."""
    out = [
        (f"{name}_bucket", labels(**label_values, le=_number(le)), float(value <= le))
        for le in buckets
    ]
    out.append((f"{name}_bucket", labels(**label_values, le="+Inf"), 1.0))
    out.append((f"{name}_sum", labels(**label_values), value))
    out.append((f"{name}_count", labels(**label_values), 1.0))
    return out


def job_ended(status: str, model: str, size: str, seconds: float | None) -> list[Sample]:
    """A job's end: counted by status; a success's generation time by model and size."""
    samples = counter("sdapi_jobs_finished_total", status=status)
    if status == "success" and seconds is not None:
        samples += histogram("sdapi_generation_seconds", seconds, SECONDS, model=model, size=size)
    return samples


def batch(images: int) -> list[Sample]:
    return histogram("sdapi_batch_images", images, IMAGES)


def webhook_attempt(outcome: str) -> list[Sample]:
    return counter("sdapi_webhook_deliveries_total", outcome=outcome)


def _number(value: float) -> str:
    return f"{value:g}"


class LocalMetrics:
    """Samples kept by this process only, added up in memory (thread-safe)."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def add(self, samples: Iterable[Sample]) -> None:
        with self._lock:
            for name, label_set, value in samples:
                key = (name, label_set)
                self._values[key] = self._values.get(key, 0.0) + value

    def samples(self) -> list[Sample]:
        with self._lock:
            return [(name, label_set, value) for (name, label_set), value in self._values.items()]


def render(samples: Iterable[Sample]) -> str:
    """The Prometheus text exposition (version 0.0.4) of `samples`, grouped by family."""
    by_family: dict[str, list[Sample]] = {}
    for sample in samples:
        by_family.setdefault(_family(sample[0]), []).append(sample)
    lines: list[str] = []
    for family in sorted(by_family):
        kind, text = FAMILIES.get(family, ("untyped", family))
        lines += [f"# HELP {family} {text}", f"# TYPE {family} {kind}"]
        for name, label_set, value in sorted(by_family[family], key=_sort_key):
            lines.append(
                f"{name}{{{label_set}}} {_number(value)}"
                if label_set
                else f"{name} {_number(value)}"
            )
    return "\n".join(lines) + "\n"


def _family(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in FAMILIES:
            return name.removesuffix(suffix)
    return name


def _sort_key(sample: Sample) -> tuple[str, str, float]:
    """Buckets in ascending `le` order (+Inf last), as scrapers expect; others by name."""
    name, label_set, _ = sample
    le = label_set.rsplit('le="', 1)[-1].rstrip('"') if 'le="' in label_set else ""
    bound = float("inf") if le == "+Inf" else float(le) if le else 0.0
    return (name, label_set.split('le="')[0], bound)
