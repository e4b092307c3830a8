"""Webhook signing: the Standard Webhooks wire format, replay checks, and the secret file.

Signatures are checked against HMACs computed here straight from the spec's formula, and against
the spec's published example, so a bug shared by `sign` and `verify` cannot pass unnoticed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sdapi.errors import ConfigurationError
from sdapi.webhooks import (
    WebhookVerificationError,
    generate_secret,
    sign,
    signature_headers,
    verify,
)
from sdapi.webhooks import secret as secret_module
from sdapi.webhooks.secret import load_or_create_secret
from sdapi.webhooks.signing import parse_secret

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
MSG_ID = "msg_2b7GQKzVJtSn1d"
NOW = 1_700_000_000
BODY = json.dumps({"status": "success", "id": 42}).encode()


def spec_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The spec's formula, written out independently of sdapi."""
    content = f"{msg_id}.{timestamp}.{body.decode()}".encode()
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def headers_for(signature: str, timestamp: int = NOW, msg_id: str = MSG_ID) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


# --- signing ---------------------------------------------------------------------------------


def test_round_trip() -> None:
    headers = signature_headers(SECRET, MSG_ID, BODY, timestamp=NOW)
    assert verify(BODY, headers, SECRET, now=NOW) == {"status": "success", "id": 42}


def test_sign_matches_the_spec_formula() -> None:
    assert sign(SECRET, MSG_ID, NOW, BODY) == spec_signature(KEY, MSG_ID, NOW, BODY)


def test_sign_matches_the_published_example() -> None:
    """The example from the Standard Webhooks reference libraries' tests."""
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_headers_default_to_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sdapi.webhooks.signing.time.time", lambda: NOW + 0.9)
    headers = signature_headers(SECRET, MSG_ID, BODY)
    assert headers == headers_for(spec_signature(KEY, MSG_ID, NOW, BODY))


def test_sign_refuses_a_float_timestamp() -> None:
    with pytest.raises(TypeError):
        sign(SECRET, MSG_ID, NOW + 0.5, BODY)  # type: ignore[arg-type]


def test_generated_secrets_are_fresh_32_byte_keys() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_") and first != second
    assert len(parse_secret(first)) == 32


# --- secrets ---------------------------------------------------------------------------------


def test_secret_with_and_without_prefix() -> None:
    bare = SECRET.removeprefix("whsec_")
    assert parse_secret(SECRET) == parse_secret(bare) == KEY
    signature = sign(bare, MSG_ID, NOW, BODY)
    assert verify(BODY, headers_for(signature), SECRET, now=NOW)
    assert verify(BODY, headers_for(signature), bare, now=NOW)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "whsec_",
        "whsec_not base64!",
        "whsec_" + base64.b64encode(b"x" * 15).decode(),  # too short
        "whsec_" + base64.b64encode(b"x" * 65).decode(),  # too long
        "whsec_" + base64.b64encode(KEY).decode().rstrip("="),  # padding missing
    ],
)
def test_bad_secrets_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        parse_secret(bad)
    with pytest.raises(ValueError):
        sign(bad, MSG_ID, NOW, BODY)


# --- verification failures ------------------------------------------------------------------


def signed_headers(timestamp: int = NOW) -> dict[str, str]:
    return headers_for(spec_signature(KEY, MSG_ID, timestamp, BODY), timestamp)


def test_tampered_body_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(BODY.replace(b"42", b"43"), signed_headers(), SECRET, now=NOW)


def test_tampered_id_is_refused() -> None:
    headers = {**signed_headers(), "webhook-id": "msg_other"}
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(BODY, headers, SECRET, now=NOW)


def test_wrong_secret_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(BODY, signed_headers(), generate_secret(), now=NOW)


@pytest.mark.parametrize(
    ("offset", "reason"), [(-301, "too old"), (301, "future")], ids=["old", "future"]
)
def test_timestamps_outside_the_tolerance_are_refused(offset: int, reason: str) -> None:
    headers = signed_headers(NOW + offset)
    with pytest.raises(WebhookVerificationError, match=reason):
        verify(BODY, headers, SECRET, now=NOW)
    assert verify(BODY, headers, SECRET, now=NOW, tolerance_s=302)


@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamps_at_the_tolerance_edge_pass(offset: int) -> None:
    assert verify(BODY, signed_headers(NOW + offset), SECRET, now=NOW)


#: Arabic-Indic digits: str.isdigit() accepts them and int() parses them, the wire must not.
NON_ASCII_DIGITS = "\u0661\u0667\u0660\u0660"


@pytest.mark.parametrize("stamp", ["", "abc", "1.7e9", "-5", "1700000000.0", NON_ASCII_DIGITS])
def test_malformed_timestamps_are_refused(stamp: str) -> None:
    headers = {**signed_headers(), "webhook-timestamp": stamp}
    with pytest.raises(WebhookVerificationError, match="webhook-timestamp"):
        verify(BODY, headers, SECRET, now=NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_refused(missing: str) -> None:
    headers = signed_headers()
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match=f"missing {missing} header"):
        verify(BODY, headers, SECRET, now=NOW)


def test_one_valid_signature_among_several_passes() -> None:
    valid = spec_signature(KEY, MSG_ID, NOW, BODY)
    other = spec_signature(b"k" * 32, MSG_ID, NOW, BODY)
    headers = headers_for(f"{other} v1,garbage v1, {valid}")
    assert verify(BODY, headers, SECRET, now=NOW)


def test_other_versions_are_ignored() -> None:
    valid = spec_signature(KEY, MSG_ID, NOW, BODY)
    digest = valid.removeprefix("v1,")
    assert verify(BODY, headers_for(f"v2,whatever {valid}"), SECRET, now=NOW)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(BODY, headers_for(f"v2,{digest} v1a,{digest}"), SECRET, now=NOW)


def test_header_names_are_case_insensitive() -> None:
    headers = {name.title(): value for name, value in signed_headers().items()}
    assert "Webhook-Signature" in headers
    assert verify(BODY, headers, SECRET, now=NOW)
    upper = {name.upper(): value for name, value in signed_headers().items()}
    assert verify(BODY, upper, SECRET, now=NOW)


def test_str_body_verifies_like_bytes() -> None:
    body = '{"prompt": "café ☕"}'
    headers = headers_for(spec_signature(KEY, MSG_ID, NOW, body.encode()))
    assert verify(body, headers, SECRET, now=NOW) == {"prompt": "café ☕"}


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_signed_body_must_be_a_json_object(body: bytes) -> None:
    headers = signature_headers(SECRET, MSG_ID, body, timestamp=NOW)
    with pytest.raises(WebhookVerificationError, match="JSON"):
        verify(body, headers, SECRET, now=NOW)


def test_verification_error_is_a_value_error() -> None:
    assert issubclass(WebhookVerificationError, ValueError)


def test_package_import_pulls_in_only_the_standard_library() -> None:
    script = (
        "import sys; before = set(sys.modules); import sdapi.webhooks; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    loaded = result.stdout.split()
    foreign = [
        name
        for name in loaded
        if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] != "sdapi"
    ]
    assert foreign == []
    assert {n for n in loaded if n.startswith("sdapi")} <= {
        "sdapi",
        "sdapi.webhooks",
        "sdapi.webhooks.signing",
    }


# --- the secret file --------------------------------------------------------------------------


def test_secret_file_is_created_private_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "webhook_secret"
    created = load_or_create_secret(path)
    assert len(parse_secret(created)) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == created
    assert os.listdir(path.parent) == ["webhook_secret"]  # no temp files left behind


def test_existing_secret_is_read_stripped(tmp_path: Path) -> None:
    path = tmp_path / "webhook_secret"
    path.write_text(f"  {SECRET}\n\n")
    assert load_or_create_secret(path) == SECRET


@pytest.mark.parametrize("content", ["", "whsec_corrupt!!", "whsec_c2hvcnQ="])
def test_corrupt_secret_file_is_refused_not_replaced(tmp_path: Path, content: str) -> None:
    path = tmp_path / "webhook_secret"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=str(path)):
        load_or_create_secret(path)
    assert path.read_text() == content


def test_losing_a_creation_race_returns_the_winners_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process creates the file between our check and our link: we must adopt it."""
    path = tmp_path / "webhook_secret"
    winner = generate_secret()

    def racing_generate() -> str:
        path.write_text(winner + "\n")
        return generate_secret()

    monkeypatch.setattr(secret_module, "generate_secret", racing_generate)
    assert load_or_create_secret(path) == winner
    assert path.read_text().strip() == winner
    assert os.listdir(tmp_path) == ["webhook_secret"]


@pytest.mark.parametrize("round_", range(5))
def test_concurrent_creation_yields_one_secret(tmp_path: Path, round_: int) -> None:
    path = tmp_path / "webhook_secret"
    workers = 16
    barrier = threading.Barrier(workers)
    results: list[str] = []
    lock = threading.Lock()

    def create() -> None:
        barrier.wait()
        value = load_or_create_secret(path)
        with lock:
            results.append(value)

    threads = [threading.Thread(target=create) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == workers
    assert set(results) == {path.read_text().strip()}
    assert os.listdir(tmp_path) == ["webhook_secret"]


#: A child that announces it is ready, waits for the start signal, then races for the file.
RACER = """
import sys, time
from pathlib import Path
from sdapi.webhooks.secret import load_or_create_secret
path, ready, go = (Path(arg) for arg in sys.argv[1:])
ready.touch()
while not go.exists():
    time.sleep(0.001)
print(load_or_create_secret(path))
"""


def test_concurrent_processes_yield_one_secret(tmp_path: Path) -> None:
    path, go = tmp_path / "secrets" / "webhook_secret", tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(6)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(path), str(flag), str(go)], stdout=subprocess.PIPE
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 30
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outputs = {proc.communicate(timeout=60)[0].decode().strip() for proc in procs}
    assert [proc.returncode for proc in procs] == [0] * len(procs)
    assert outputs == {path.read_text().strip()}
    assert os.listdir(path.parent) == ["webhook_secret"]
