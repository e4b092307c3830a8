"""The `sdapi` command: serve, worker, keys, migrate; generate, fetch, jobs (the client).

Each flag maps to a `Settings` field and so also has an `SDAPI_<NAME>` variable; a flag given on
the command line wins over the environment. Bad configuration ends with one clear line.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import ValidationError

from sdapi import __version__, logs
from sdapi.catalog.families import FAMILIES
from sdapi.catalog.registry import MODELS_FILE_ENV, Defaults, ModelEntry, Registry
from sdapi.errors import ConfigurationError
from sdapi.settings import Settings

if TYPE_CHECKING:
    from sdapi.auth.keys import KeyLimits
    from sdapi.worker.process import WorkerSupervisor

F = TypeVar("F", bound=Callable[..., Any])

#: flag -> (Settings field, click options). Commands pick the ones they use.
OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "--data-dir": ("data_dir", {"help": "Directory for the database, images and models."}),
    "--database": ("database", {"help": "Database URL (default sqlite:///<data-dir>/sdapi.db)."}),
    "--storage": ("storage", {"help": "Image store (default <data-dir>/images)."}),
    "--s3-endpoint-url": ("s3_endpoint_url", {"help": "S3-compatible endpoint (MinIO, R2, ...)."}),
    "--s3-region": ("s3_region", {"help": "S3 region."}),
    "--s3-access-key-id": ("s3_access_key_id", {"help": "S3 access key id."}),
    "--s3-secret-access-key": ("s3_secret_access_key", {"help": "S3 secret access key."}),
    "--s3-public-url": (
        "s3_public_url",
        {"help": "Public base URL of the bucket for image links."},
    ),
    "--public-url": ("public_url", {"help": "Base URL clients reach this server at."}),
    "--host": ("host", {"help": "Address to listen on (default 127.0.0.1)."}),
    "--port": ("port", {"type": int, "help": "Port to listen on (default 7860)."}),
    "--model": (
        "model",
        {
            "multiple": True,
            "help": "Model served: a model registry id (sdapi models list), sdapi-tiny (or "
            "-sdxl, -sd3), a Hugging Face repo id, a local folder or a .safetensors file "
            "(repeatable; the first is the default).",
        },
    ),
    "--models-file": (
        "models_file",
        {"help": "Model registry file (default <data-dir>/models.toml)."},
    ),
    "--upscaler": (
        "upscaler",
        {
            "help": "x4 upscaler for super_resolution: sdapi-tiny-upscaler (default), a "
            "diffusers folder or a repo id such as stabilityai/stable-diffusion-x4-upscaler "
            '("" = off).'
        },
    ),
    "--translator": (
        "translator",
        {
            "help": "Translation model for multi_lingual, run by the workers before drawing: "
            "sdapi-tiny-translator (offline tests), a folder or a repo id such as "
            'Helsinki-NLP/opus-mt-mul-en ("" = off, the default).'
        },
    ),
    "--workers": ("workers", {"type": int, "help": "Worker processes to start (0 = API only)."}),
    "--device": ("device", {"help": "auto, cpu, cuda or cuda:N."}),
    "--threads": ("threads", {"type": int, "help": "torch CPU threads per worker (0 = default)."}),
    "--compile/--no-compile": (
        "compile",
        {
            "default": None,
            "help": "torch.compile each model's UNet/transformer at load (GPU: faster steps,"
            " a slower start).",
        },
    ),
    "--sync-timeout": (
        "sync_timeout",
        {"type": float, "help": "Seconds a generation call waits before answering processing."},
    ),
    "--lease-seconds": (
        "lease_seconds",
        {"type": float, "help": "Seconds before a silent worker's job is retried."},
    ),
    "--allow-host": (
        "allow_hosts",
        {
            "multiple": True,
            "help": "Host or CIDR that image URLs may reach although private (repeatable).",
        },
    ),
    "--http-errors/--no-http-errors": (
        "http_errors",
        {"default": None, "help": "Answer errors with HTTP 4xx instead of 200."},
    ),
    "--max-batch": (
        "max_batch",
        {
            "type": int,
            "help": "Most images jobs share a pipeline call with (0 = by device and size,"
            " 1 = off); a lone job always runs in a call of its own size.",
        },
    ),
    "--batch-wait": (
        "batch_wait",
        {
            "type": float,
            "help": "Seconds a batch that found company waits for more of the burst.",
        },
    ),
    "--model-memory": (
        "model_memory",
        {"type": float, "help": "GiB of model weights a worker keeps loaded."},
    ),
    "--affinity-wait": (
        "affinity_wait",
        {
            "type": float,
            "help": "Seconds a job for an unloaded model waits "
            "at most before a worker switches to it.",
        },
    ),
    "--max-attempts": (
        "max_attempts",
        {"type": int, "help": "A job whose worker died this often fails."},
    ),
    "--webhook-secret": (
        "webhook_secret",
        {"help": "whsec_ secret that signs webhooks (default: generated in the data dir)."},
    ),
    "--webhook-retry": (
        "webhook_retry",
        {"type": float, "help": "Seconds before the first webhook retry (then x4 each time)."},
    ),
    "--webhook-retry-window": (
        "webhook_retry_window",
        {"help": "How long failed webhooks are retried (e.g. 24h)."},
    ),
    "--retention": (
        "retention",
        {"help": "Remove outputs this long after their job ended (e.g. 7d; 0 = keep)."},
    ),
    "--forget-after": (
        "forget_after",
        {"help": "Forget expired jobs this long after they ended (default 30d; 0 = keep)."},
    ),
    "--temp-ttl": ("temp_ttl", {"help": 'How long temp: "yes" links work (default 24h).'}),
    "--job-deadline": (
        "job_deadline",
        {"help": "Fail jobs still queued this long after submission (0 = no limit)."},
    ),
    "--track-id-window": (
        "track_id_window",
        {"help": "A repeated track_id within this window returns the first job (0 = off)."},
    ),
    "--drain-timeout": (
        "drain_timeout",
        {
            "type": float,
            "help": "Seconds a stopping worker has to finish its batch before handing it back.",
        },
    ),
    "--max-queued-per-key": (
        "max_queued_per_key",
        {"type": int, "help": "Jobs one key may have queued or running (0 = no cap)."},
    ),
    "--max-queued": (
        "max_queued",
        {"type": int, "help": "Jobs the whole queue may hold (0 = no cap)."},
    ),
    "--rate-limit": (
        "rate_limit",
        {"type": float, "help": "Generation requests per minute per key (0 = no limit)."},
    ),
    "--max-key-failures": (
        "max_key_failures",
        {"type": int, "help": "Bad keys per minute from one address before it is refused."},
    ),
    "--ready-max-queued": (
        "ready_max_queued",
        {"type": int, "help": "/ready answers 503 above this many queued jobs (0 = no bound)."},
    ),
    "--log-level": ("log_level", {"help": "debug, info, warning or error."}),
    "--log-format": (
        "log_format",
        {"type": click.Choice(["text", "json"]), "help": "Log lines as text or JSON."},
    ),
}
#: Where the shared state lives: what every process of one deployment must agree on.
STORE_FLAGS = (
    "--data-dir",
    "--database",
    "--storage",
    "--s3-endpoint-url",
    "--s3-region",
    "--s3-access-key-id",
    "--s3-secret-access-key",
    "--s3-public-url",
)


def settings_options(*flags: str) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        for flag in reversed(flags):
            name, opts = OPTIONS[flag]
            fn = click.option(*flag.split(" "), name, **{"default": None, **opts})(fn)
        return fn

    return decorate


def load_settings(flags: dict[str, Any]) -> Settings:
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    try:
        return Settings(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise click.UsageError(f"invalid setting {field}: {err['msg']}") from None


@click.group()
@click.version_option(__version__, prog_name="sdapi")
def main() -> None:
    """sdapi: a self-hosted Stable Diffusion API v3 server."""


@main.command()
@settings_options(*OPTIONS)
def serve(**flags: Any) -> None:
    """Serve the API and start the worker processes."""
    from sdapi.api.app import create_app
    from sdapi.api.serving import serve_app
    from sdapi.backends import open_backends
    from sdapi.catalog.models import check_model_ref, check_upscaler_ref
    from sdapi.catalog.translators import check_translator_ref
    from sdapi.webhooks.secret import server_secret
    from sdapi.worker.process import WorkerSupervisor

    settings = load_settings(flags)
    logs.configure(settings.log_level, settings.log_format)
    registry = _or_exit(_load_registry, settings)
    if settings.workers:  # a bad --model fails here, not in a worker restarted forever
        for model in settings.model:
            _or_exit(check_model_ref, model, registry, settings.models_dir)
        if settings.upscaler:
            _or_exit(check_upscaler_ref, settings.upscaler)
    if settings.translator:
        _or_exit(check_translator_ref, settings.translator)
    backends = _or_exit(open_backends, settings)
    _or_exit(server_secret, settings)  # a bad --webhook-secret stops here, in one line
    _first_key(backends.keys)
    _publish_registry(settings)
    supervisor = WorkerSupervisor(settings, settings.workers)
    supervisor.start()
    try:
        app = create_app(settings, backends)
        serve_app(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    finally:
        _stop_at_once_on_signal(supervisor)
        supervisor.stop()
        backends.close()


def _stop_at_once_on_signal(supervisor: WorkerSupervisor) -> None:
    """While the workers drain, another signal kills them and exits: their leases bring the
    work back to the queue."""

    def at_once(signum: int, frame: object) -> None:
        supervisor.kill()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, at_once)
    signal.signal(signal.SIGINT, at_once)


@main.group()
def webhooks() -> None:
    """Webhook signing."""


@webhooks.command("secret")
@settings_options("--data-dir", "--webhook-secret")
def webhook_secret(**flags: Any) -> None:
    """Print the secret webhooks are signed with (receivers verify with it)."""
    from sdapi.webhooks.secret import server_secret

    print(_or_exit(server_secret, load_settings(flags)))


@main.command()
@settings_options(
    *STORE_FLAGS,
    "--model",
    "--models-file",
    "--upscaler",
    "--device",
    "--threads",
    "--compile/--no-compile",
    "--lease-seconds",
    "--drain-timeout",
    "--max-batch",
    "--batch-wait",
    "--model-memory",
    "--affinity-wait",
    "--max-attempts",
    "--log-level",
    "--log-format",
)
def worker(**flags: Any) -> None:
    """Run one worker: claim jobs from the queue and generate their images."""
    from sdapi.worker.process import run_worker

    settings = load_settings(flags)
    logs.configure(settings.log_level, settings.log_format)
    _or_exit(_load_registry, settings)  # a broken registry file stops here, in one line
    _publish_registry(settings)
    _or_exit(run_worker, settings)


@main.command()
@settings_options("--data-dir", "--database")
def migrate(**flags: Any) -> None:
    """Create or upgrade the database schema (serve and worker also do this at start)."""
    from sdapi.backends import open_database

    _or_exit(open_database, load_settings(flags))
    click.echo("database is up to date")


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@settings_options("--data-dir", "--database")
@click.option("--name", default="default", help="A label to tell keys apart.")
@click.option(
    "--max-queued",
    type=click.IntRange(min=0),
    help="Jobs this key may have queued or running (default: the server's; 0 = no cap).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    help="Generation requests per minute for this key (default: the server's; 0 = no limit).",
)
def keys_create(name: str, max_queued: int | None, rate: float | None, **flags: Any) -> None:
    """Create a key; the key itself is the last line printed (it cannot be shown again)."""
    from sdapi.auth.keys import KeyLimits

    store = _key_store(flags)
    key, secret = store.create(name, KeyLimits(max_queued, rate))
    click.echo(f"created key {key.id} ({key.name}); store it now, it is not shown again:", err=True)
    click.echo(secret)


@keys.command("list")
@settings_options("--data-dir", "--database")
def keys_list(**flags: Any) -> None:
    """List keys (only their first characters are known)."""
    for key in _key_store(flags).list():
        state = "active" if key.active else f"revoked {_when(key.revoked_at)}"
        click.echo(
            f"{key.id}  {key.key_prefix}...  {key.name:<20}  {_when(key.created_at)}  {state}"
            f"{_limits(key.limits)}"
        )


def _limits(limits: KeyLimits) -> str:
    parts = []
    if limits.max_queued is not None:
        parts.append(f"max queued {limits.max_queued}")
    if limits.rate_per_minute is not None:
        parts.append(f"{limits.rate_per_minute:g}/min")
    return f"  ({', '.join(parts)})" if parts else ""


@keys.command("revoke")
@settings_options("--data-dir", "--database")
@click.argument("key_id")
def keys_revoke(key_id: str, **flags: Any) -> None:
    """Revoke a key by its id (or its first characters, as `keys list` shows them)."""
    key = _key_store(flags).revoke(key_id)
    if key is None:
        raise click.ClickException(f"no single key matches {key_id!r}")
    click.echo(f"revoked {key.id} ({key.name})")


@main.group()
def models() -> None:
    """Declare, list and remove the models clients can ask for (the model registry).

    A model is declared once with its id (the model_id clients send), its source and request
    defaults; serve it with `--model ID`.
    """


REGISTRY_FLAGS = ("--data-dir", "--models-file")
#: Their click parameter names.
REGISTRY_PARAMS = tuple(OPTIONS[flag][0] for flag in REGISTRY_FLAGS)
#: `models add` flags that are request defaults (click's parameter names).
DEFAULT_OPTIONS = (
    "width",
    "height",
    "steps",
    "guidance_scale",
    "scheduler",
    "negative_prompt",
    "vae",
)


@models.command("list")
@settings_options(*REGISTRY_FLAGS, "--model")
def models_list(**flags: Any) -> None:
    """List the declared and built-in models, and which ones --model serves."""
    settings = load_settings(flags)
    registry = _or_exit(_load_registry, settings)
    rows: list[tuple[str, ...]] = [("ID", "FAMILY", "SERVED", "SOURCE")]
    rows += [_model_row(entry, registry, settings) for entry in _listed(registry, settings)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[3]]))  # the source last, unpadded
    click.echo(f"({len(registry.declared)} declared in {registry.path})", err=True)


def _listed(registry: Registry, settings: Settings) -> list[ModelEntry]:
    """Every model in the registry, then served models named directly (folders, repo ids)."""
    entries = list(registry)
    return entries + [registry.resolve(m) for m in settings.model if m not in registry]


def _model_row(entry: ModelEntry, registry: Registry, settings: Settings) -> tuple[str, ...]:
    from sdapi.catalog.models import model_family

    family = model_family(entry.id, settings.models_dir, registry) or "?"
    served = {settings.default_model: "default", **dict.fromkeys(settings.model[1:], "yes")}
    source = "built-in" if entry.builtin else entry.source
    if entry.config:
        source += f" (config: {entry.config})"
    return entry.id, family, served.get(entry.id, "-"), source


@models.command("add")
@settings_options(*REGISTRY_FLAGS)
@click.argument("model_id")
@click.argument("source")
@click.option("--family", type=click.Choice(FAMILIES), help="sd, sdxl or sd3 (default: detected).")
@click.option(
    "--config",
    help="For a .safetensors file: the base model's diffusers folder, a built-in model, or a "
    "repo id already in the models directory's hub cache (its configs; never downloaded).",
)
@click.option("--name", default="", help="model_name in model_list (default: the id).")
@click.option("--description", default="", help="Description in model_list.")
@click.option("--instance-prompt", default="", help="Trigger words (model_list instance_prompt).")
@click.option("--width", type=click.IntRange(min=1), help="Default width.")
@click.option("--height", type=click.IntRange(min=1), help="Default height.")
@click.option("--steps", type=click.IntRange(min=1), help="Default num_inference_steps.")
@click.option("--guidance-scale", type=click.FloatRange(min=0), help="Default guidance_scale.")
@click.option("--scheduler", help="Default scheduler (a wire scheduler name).")
@click.option("--negative-prompt", help="Default negative_prompt.")
@click.option("--vae", help="Default vae: one installed in the models folder's vae/.")
def models_add(model_id: str, source: str, **options: Any) -> None:
    """Declare MODEL_ID, loaded from SOURCE.

    SOURCE is a diffusers folder, a .safetensors checkpoint, a Hugging Face repo id (owner/name)
    or a built-in model. The family is detected when the source shows it.
    """
    flags = {name: options.pop(name) for name in REGISTRY_PARAMS}
    settings = load_settings(flags)
    registry = _or_exit(_load_registry, settings)
    defaults = Defaults(**{name: options.pop(name) for name in DEFAULT_OPTIONS})
    entry = ModelEntry(
        id=model_id,
        source=_stored_source(source),
        defaults=defaults,
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **options,
    )
    entry = _or_exit(_checked_entry, entry, registry, settings)
    path = _or_exit(registry.with_entry(entry).save)
    family = entry.family or "family detected when it is loaded"
    click.echo(f"added {entry.id} ({family}) to {path}; serve it with --model {entry.id}")


def _stored_source(source: str) -> str:
    # An existing path is stored absolute: the server may run from another directory.
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def _checked_entry(entry: ModelEntry, registry: Registry, settings: Settings) -> ModelEntry:
    """`entry` once its source is checked, with the family the source shows when none was
    given; ConfigurationError when the source is missing, unusable, or of another family."""
    from sdapi.catalog.models import check_model_ref, model_family

    added = registry.with_entry(entry)  # the id, family and defaults
    check_model_ref(entry.id, added, settings.models_dir)
    detected = model_family(entry.source, settings.models_dir, Registry())
    if entry.family and detected and entry.family != detected:
        raise ConfigurationError(f"the family of {entry.source} is {detected}, not {entry.family}")
    if entry.family or not detected:
        return entry
    entry = replace(entry, family=detected)
    registry.with_entry(entry)  # defaults again, now against the family (sd3 sizes)
    return entry


@models.command("remove")
@settings_options(*REGISTRY_FLAGS)
@click.argument("model_id")
def models_remove(model_id: str, **flags: Any) -> None:
    """Remove MODEL_ID from the registry (its files stay where they are)."""
    settings = load_settings(flags)
    registry = _or_exit(_load_registry, settings)
    path = _or_exit(lambda: registry.without(model_id).save())
    click.echo(f"removed {model_id} from {path}")


def _load_registry(settings: Settings) -> Registry:
    return Registry.load(settings.models_path)


def _publish_registry(settings: Settings) -> None:
    """Name the registry file in $SDAPI_MODELS_FILE (the variable the setting itself reads) for
    the code of this process that knows no settings: an Engine loading its model by registry id,
    the API checking a model's family. Done once the configuration is checked, just before
    serving, so a command that stops on a configuration error leaves the environment alone."""
    os.environ[MODELS_FILE_ENV] = os.path.abspath(settings.models_path)


#: Where the client commands send requests unless --server or SDAPI_SERVER say otherwise.
DEFAULT_SERVER = "http://127.0.0.1:7860"
IMAGE_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def client_options(fn: F) -> F:
    """--server and --key, for the commands that talk to a running server."""
    fn = click.option("--key", envvar="SDAPI_KEY", help="API key (default $SDAPI_KEY).")(fn)
    return click.option(
        "--server",
        envvar="SDAPI_SERVER",
        default=DEFAULT_SERVER,
        show_default=True,
        help="Server URL (or $SDAPI_SERVER).",
    )(fn)


def output_option(fn: F) -> F:
    return click.option(
        "-o",
        "--output",
        help="File for one image (several become NAME-0.png, NAME-1.png, ...), or a directory "
        "(existing, or ending in /). Default: the current directory, under the server's names.",
    )(fn)


@main.command()
@click.argument("prompt")
@output_option
@click.option("--negative-prompt", help="What the image should not show.")
@click.option("--width", type=int, help="Width in pixels.")
@click.option("--height", type=int, help="Height in pixels.")
@click.option("--steps", type=int, help="Denoising steps.")
@click.option("--seed", type=int, help="Seed, for a repeatable image.")
@click.option("--samples", type=int, help="Images to generate.")
@click.option("--guidance-scale", type=float, help="How closely to follow the prompt.")
@click.option("--scheduler", help="Scheduler name.")
@click.option("--strength", type=float, help="How much of --init-image to change (0..1).")
@click.option("--model", "model_id", help="Model id (default: the server's first model).")
@click.option("--init-image", type=IMAGE_FILE, help="Start from this image (img2img).")
@click.option("--mask", type=IMAGE_FILE, help="With --init-image: repaint its white part.")
@click.option("--timeout", type=float, help="Give up waiting after this many seconds.")
@client_options
def generate(
    prompt: str,
    output: str | None,
    init_image: Path | None,
    mask: Path | None,
    timeout: float | None,
    server: str,
    key: str | None,
    **options: Any,
) -> None:
    """Generate images for PROMPT and save them.

    Shows a live progress bar; Ctrl-C offers to cancel the job.
    """
    from sdapi import console

    job = console.Generation(prompt, options, init_image, mask)
    sys.exit(console.main(server, key, lambda c, t: console.generate(c, t, job, output, timeout)))


@main.command()
@click.argument("job_id", type=int)
@output_option
@click.option("--save/--no-save", default=True, help="Save the images, or only print URLs.")
@client_options
def fetch(job_id: int, output: str | None, save: bool, server: str, key: str | None) -> None:
    """Show where job JOB_ID stands, and save its images once done."""
    from sdapi import console

    sys.exit(console.main(server, key, lambda c, t: console.fetch(c, t, job_id, output, save)))


@main.command()
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@client_options
def jobs(limit: int, server: str, key: str | None) -> None:
    """A table of this key's newest jobs and their states."""
    from sdapi import console

    sys.exit(console.main(server, key, lambda c, t: console.jobs(c, t, limit)))


def _first_key(store: Any) -> None:
    """A fresh install gets one key, printed once, so the first request can be made at once."""
    if store.list():
        return
    key, secret = store.create("first")
    click.echo(
        f"No API key existed, so one was created ({key.id}). Keep it; it is not shown "
        f"again (manage keys with `sdapi keys`):\n\n    {secret}\n",
        err=True,
    )


def _key_store(flags: dict[str, Any]) -> Any:
    from sdapi.backends import open_database

    return _or_exit(open_database, load_settings(flags))[1]


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or 0, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _or_exit(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except ConfigurationError as exc:
        click.echo(f"sdapi: {exc}", err=True)
        sys.exit(2)
