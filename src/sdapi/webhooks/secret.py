"""The server's webhook signing secret, kept in a file created once and then only read.

Several processes (API replicas, workers) may start at once against the same file. Each writes
its candidate to a private temp file and hard-links it onto the final name: `os.link` refuses to
overwrite, so exactly one candidate wins and the others read it. The final name only ever points
at a complete, fsynced file, so no reader sees a half-written secret.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from sdapi.errors import ConfigurationError
from sdapi.settings import Settings
from sdapi.webhooks.signing import generate_secret, parse_secret

#: The file in the data directory that holds the secret when none is configured.
SECRET_FILE = "webhook_secret"
#: Owner read/write only: the secret lets anyone forge deliveries.
SECRET_FILE_MODE = 0o600


def load_or_create_secret(path: Path) -> str:
    """The `whsec_` secret stored at `path`, created (mode 0600) with its directory if missing.

    Raises ConfigurationError naming the file when it holds no valid secret or cannot be
    read or written: a corrupt file must stop start-up, never be silently replaced, or every
    receiver configured with the old secret would start refusing deliveries.
    """
    path = Path(path)
    existing = _read_secret(path)
    if existing is not None:
        return existing
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = generate_secret()
        if _publish(path, candidate):
            return candidate
    except OSError as exc:
        raise ConfigurationError(f"cannot create webhook secret file {path}: {exc}") from exc
    winner = _read_secret(path)
    if winner is None:  # the winner's file vanished again: someone is deleting it under us
        raise ConfigurationError(f"webhook secret file {path} disappeared while being created")
    return winner


def _read_secret(path: Path) -> str | None:
    """The validated secret in `path`, or None when there is no such file."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read webhook secret file {path}: {exc}") from exc
    try:
        parse_secret(text)
    except ValueError as exc:
        raise ConfigurationError(f"invalid webhook secret in {path}: {exc}") from exc
    return text


def _publish(path: Path, secret: str) -> bool:
    """Put `secret` at `path` unless a file is already there; True if this call's secret won."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write_private(temp, secret)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        _fsync_dir(path.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _write_private(temp: Path, secret: str) -> None:
    """Write and fsync a new file that is 0600 from birth (no window where others can read)."""
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    try:
        os.fchmod(fd, SECRET_FILE_MODE)  # the umask may have cleared bits, never added them
        os.write(fd, f"{secret}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make the new name durable; skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def server_secret(settings: Settings) -> str:
    """The configured secret (validated), else the one kept in the data directory."""
    if settings.webhook_secret:
        try:
            parse_secret(settings.webhook_secret)
        except ValueError as exc:
            raise ConfigurationError(f"invalid --webhook-secret: {exc}") from exc
        return settings.webhook_secret.strip()
    return load_or_create_secret(settings.data_dir / SECRET_FILE)
