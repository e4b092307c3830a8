"""Configuration: one frozen `Settings`, read once at start and passed down (never a global).

Every field can be set by a CLI flag or by an `SDAPI_<NAME>` environment variable; flags win.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "sdapi-tiny"
#: The built-in tiny x4 upscaler (sdapi.engine.tiny) that serves super_resolution by default.
DEFAULT_UPSCALER = "sdapi-tiny-upscaler"
#: How long a claim holds a job without a heartbeat before another worker may take it over.
DEFAULT_LEASE_S = 30.0
#: How long a generation call waits for its job before answering `processing` (spec: sync window).
DEFAULT_SYNC_TIMEOUT_S = 10.0
DAY_S = 24 * 3600.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `15m`, `12h` or `7d`; ValueError (a settings error) otherwise."""
    text = text.strip().lower()
    unit = _UNITS.get(text[-1:])
    number = text[:-1] if unit else text
    try:
        return float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90, 30s, 15m, 12h, 7d)") from None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SDAPI_", frozen=True, extra="ignore")

    #: Holds the database, the images and the model cache unless those are set apart.
    data_dir: Path = Path("sdapi-data")
    #: `sqlite:///path/to/file.db` or `postgresql://user:password@host/db`;
    #: empty means `sqlite:///<data_dir>/sdapi.db`.
    database: str = ""
    #: Where images are kept: a directory or `s3://bucket/prefix`; empty means `<data_dir>/images`.
    storage: str = ""
    #: S3-compatible storage (`--storage s3://bucket/prefix`). Credentials may also come from
    #: the usual AWS variables and files; empty values leave boto3's own lookup in charge.
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    #: Public base URL of the bucket (a CDN or the bucket's website); empty: the API serves images.
    s3_public_url: str = ""
    #: Base URL clients reach this server at (behind a proxy); empty means the request's own.
    public_url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=7860, ge=0, le=65535)
    #: Models served: `sdapi-tiny`, Hugging Face repo ids or local diffusers folders. The first
    #: is the house model of v3 calls without `model_id`; workers keep as many loaded as fit.
    model: Annotated[tuple[str, ...], NoDecode] = (DEFAULT_MODEL,)
    #: The model registry (sdapi.catalog.registry): `[models.<id>]` tables naming each model's
    #: source, family and request defaults; `--model` takes their ids. Empty means
    #: `<data_dir>/models.toml` (a missing file is an empty registry).
    models_file: str = ""
    #: The x4 upscaler behind super_resolution, served by every worker beside its models:
    #: `sdapi-tiny-upscaler`, a diffusers folder or a hub repo id
    #: (`stabilityai/stable-diffusion-x4-upscaler`); empty turns super_resolution off.
    upscaler: str = DEFAULT_UPSCALER
    #: The model that translates prompts for `multi_lingual` (sdapi.engine.translation), run
    #: by the workers before drawing: `sdapi-tiny-translator`, a folder or a hub repo id
    #: (`Helsinki-NLP/opus-mt-mul-en`); empty: multi_lingual is not available. Every process of
    #: a deployment names the same one (the API drops multi_lingual without it).
    translator: str = ""
    #: Worker subprocesses started by `sdapi serve` (0 = API only).
    workers: int = Field(default=1, ge=0, le=64)
    device: str = "auto"
    #: torch CPU threads per worker; 0 = torch's default. Fixed threads keep images bit-identical.
    threads: int = Field(default=0, ge=0)
    #: torch.compile each model's denoiser at load (sdapi.engine.speed): faster steps on a GPU,
    #: paid once by a warm-up call before the worker takes jobs.
    compile: bool = False
    sync_timeout: float = Field(default=DEFAULT_SYNC_TIMEOUT_S, ge=0, le=300)
    #: The most images compatible jobs share a pipeline call with: 0 = by device and image size
    #: (see sdapi.batching), 1 = no sharing. A lone job always runs in a call of its own size.
    max_batch: int = Field(default=0, ge=0, le=64)
    #: Seconds a batch that found company (a burst is arriving) waits for more of it; a lone
    #: job never waits.
    batch_wait: float = Field(default=0.05, ge=0, le=5)
    #: GiB of model weights a worker keeps loaded (least recently used evicted beyond it);
    #: 0 = 80% of the GPU's memory, or half the RAM on a CPU.
    model_memory: float = Field(default=0, ge=0)
    #: A worker prefers jobs for models it has loaded, but takes the oldest job of any served
    #: model at least this often (seconds), so no model waits much longer than this.
    affinity_wait: float = Field(default=30.0, gt=0)
    lease_seconds: float = Field(default=DEFAULT_LEASE_S, gt=0)
    #: On SIGTERM a worker finishes its batch within this many seconds, else hands it back to
    #: the queue (a second signal stops it at once; its leases bring the work back).
    drain_timeout: float = Field(default=15.0, ge=0)
    #: A job whose worker died this many times is failed instead of retried.
    max_attempts: int = Field(default=3, ge=1)
    #: Hosts or CIDR ranges that user-supplied URLs may reach although private (SSRF allow-list).
    allow_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    #: Answer application errors with HTTP 4xx instead of the wire's HTTP 200 + status "error".
    http_errors: bool = False
    #: Signs webhooks (Standard Webhooks, `whsec_...`); empty: one generated and kept in
    #: `<data_dir>/webhook_secret`. Set the same one on every API replica.
    webhook_secret: str = ""
    #: A failed webhook is retried after this many seconds, then 4x longer each time (at most
    #: an hour apart) ...
    webhook_retry: float = Field(default=5.0, gt=0)
    #: ... until this long after the job ended (durations: 90, 30s, 15m, 12h, 7d).
    webhook_retry_window: float = Field(default=DAY_S, ge=0)
    #: Outputs (and inputs) are removed this long after their job ended, which then fetches as
    #: expired; 0 keeps them forever.
    retention: float = Field(default=0, ge=0)
    #: Expired jobs (see retention) are forgotten this long after they ended: fetch then
    #: answers "Request not found" instead of expired; 0 keeps their rows forever.
    forget_after: float = Field(default=30 * DAY_S, ge=0)
    #: How long `temp: "yes"` links work (the spec's 24 hours).
    temp_ttl: float = Field(default=DAY_S, gt=0)
    #: A job still queued this long after submission fails instead of starting; 0 = no limit.
    #: A request's own `deadline` (seconds) may ask for less.
    job_deadline: float = Field(default=0, ge=0)
    #: A request repeating a track_id under the same key within this window gets the first
    #: job instead of a new one; 0 turns this off.
    track_id_window: float = Field(default=DAY_S, ge=0)
    #: Jobs one key may have queued or running at once (a key's own limit wins); 0 = no cap.
    max_queued_per_key: int = Field(default=50, ge=0)
    #: Jobs the whole queue may hold queued or running; 0 = no cap.
    max_queued: int = Field(default=10_000, ge=0)
    #: Generation requests per minute per key (a key's own limit wins); 0 = no limit.
    rate_limit: float = Field(default=0, ge=0)
    #: Failed key attempts per minute from one client address before it is refused; 0 = off.
    max_key_failures: int = Field(default=20, ge=0)
    #: Pixels one job may ask for (width x height x samples).
    max_job_pixels: int = Field(default=4 * 1024 * 1024, ge=64 * 64)
    #: GET /ready answers 503 when more jobs than this are queued; 0 = no bound.
    ready_max_queued: int = Field(default=1000, ge=0)
    max_width: int = Field(default=1024, ge=64)
    max_height: int = Field(default=1024, ge=64)
    max_steps: int = Field(default=50, ge=1)
    log_level: str = "info"
    #: "text" or "json" (one object per line); either way each line names its jobs.
    log_format: Literal["text", "json"] = "text"

    @field_validator("allow_hosts", "model", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        # SDAPI_ALLOW_HOSTS and SDAPI_MODEL are comma separated; the flags are repeatable.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator(
        "webhook_retry_window", "retention", "temp_ttl", "job_deadline", "track_id_window",
        "forget_after",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("model")
    @classmethod
    def _some_model(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one model is needed")
        return tuple(dict.fromkeys(value))  # each once, order kept

    @property
    def default_model(self) -> str:
        return self.model[0]

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data_dir / 'sdapi.db'}"

    @property
    def storage_url(self) -> str:
        return self.storage or str(self.data_dir / "images")

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def models_path(self) -> Path:
        """The model registry file."""
        return (
            Path(self.models_file).expanduser()
            if self.models_file
            else self.data_dir / "models.toml"
        )

    def as_env(self) -> dict[str, str]:
        """The settings as SDAPI_* variables, to hand the same configuration to a subprocess."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, tuple):
                value = ",".join(value)
            env[f"SDAPI_{name.upper()}"] = str(value)
        return env
