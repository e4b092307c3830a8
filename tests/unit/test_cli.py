"""The sdapi command: keys, configuration errors, flags over environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sdapi.cli import load_settings, main


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_keys_create_list_revoke(runner: CliRunner, tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    created = runner.invoke(main, ["keys", "create", *data, "--name", "alice"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert len(secret) == 48 and secret.isalnum()
    listed = runner.invoke(main, ["keys", "list", *data])
    assert "alice" in listed.stdout and secret[:6] in listed.stdout
    assert secret not in listed.stdout and "active" in listed.stdout
    key_id = listed.stdout.split()[0]
    revoked = runner.invoke(main, ["keys", "revoke", *data, key_id])
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    assert "revoked" in runner.invoke(main, ["keys", "list", *data]).stdout
    missing = runner.invoke(main, ["keys", "revoke", *data, "key_nope"])
    assert missing.exit_code != 0 and "no single key" in missing.output


def test_bad_database_url_is_one_clear_line(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["keys", "list", "--database", "mysql://me:hunter2@x/y"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "sdapi: unsupported database URL 'mysql://me:***@x/y' (supported: sqlite:///path.db,"
        " postgresql://user:password@host:5432/dbname)"
    )


def test_unwritable_database_is_one_clear_line(runner: CliRunner, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = runner.invoke(main, ["migrate", "--database", f"sqlite:///{blocker}/sdapi.db"])
    assert result.exit_code == 2
    assert result.stderr.startswith("sdapi: cannot open SQLite database")
    assert "Traceback" not in result.output


def test_invalid_setting_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["serve", "--workers", "-1"])
    assert result.exit_code == 2 and "invalid setting workers" in result.output


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDAPI_MODEL", "from-env, other")
    monkeypatch.setenv("SDAPI_SYNC_TIMEOUT", "3")
    monkeypatch.setenv("SDAPI_ALLOW_HOSTS", "127.0.0.1, images.internal ,10.0.0.0/8")
    settings = load_settings({"model": ("from-flag",), "sync_timeout": None, "allow_hosts": ()})
    assert settings.model == ("from-flag",) and settings.sync_timeout == 3
    assert settings.allow_hosts == ("127.0.0.1", "images.internal", "10.0.0.0/8")
    flagged = load_settings({"allow_hosts": ("localhost",), "model": ()})
    assert flagged.allow_hosts == ("localhost",)
    assert flagged.model == ("from-env", "other") and flagged.default_model == "from-env"


def test_settings_round_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` hands its settings to worker subprocesses as SDAPI_* variables."""
    original = load_settings(
        {"model": "m", "allow_hosts": ("a", "b"), "lease_seconds": 5.0, "http_errors": True}
    )
    for name, value in original.as_env().items():
        monkeypatch.setenv(name, value)
    assert load_settings({}) == original


def test_serve_refuses_a_model_path_that_does_not_exist(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        main, ["serve", "--data-dir", str(tmp_path), "--model", str(tmp_path / "no-such-model")]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == f"sdapi: model path {tmp_path / 'no-such-model'} does not exist"


def test_webhook_secret_is_generated_once_and_kept(runner: CliRunner, tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    first = runner.invoke(main, ["webhooks", "secret", *data])
    assert first.exit_code == 0 and first.stdout.startswith("whsec_")
    assert (tmp_path / "webhook_secret").stat().st_mode & 0o777 == 0o600
    assert runner.invoke(main, ["webhooks", "secret", *data]).stdout == first.stdout
    given = runner.invoke(main, ["webhooks", "secret", *data, "--webhook-secret", "whsec_bad"])
    assert given.exit_code == 2 and given.stderr.startswith("sdapi: invalid --webhook-secret")


def test_keys_carry_their_own_limits(runner: CliRunner, tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    made = runner.invoke(main, ["keys", "create", *data, "--max-queued", "3", "--rate", "30"])
    assert made.exit_code == 0, made.output
    assert "(max queued 3, 30/min)" in runner.invoke(main, ["keys", "list", *data]).stdout
    bad = runner.invoke(main, ["keys", "create", *data, "--rate", "-1"])
    assert bad.exit_code == 2
