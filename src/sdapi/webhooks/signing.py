"""Standard Webhooks signing and verification (https://www.standardwebhooks.com).

Every delivery carries three headers:

- `webhook-id`: the message id, the same on every retry, so receivers can drop duplicates;
- `webhook-timestamp`: integer unix seconds of this attempt, so receivers can refuse replays;
- `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256>` entries over
  `{id}.{timestamp}.{body}`. Several entries let a sender sign with an old and a new secret
  while a receiver rotates; entries of other versions are skipped, not refused.

Secrets travel as `whsec_<base64>`; the HMAC key is the decoded bytes, never the text. This
module imports only the standard library: receivers import it without the server's dependencies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
#: Random bytes in a generated secret (the spec asks for 24 to 64).
SECRET_BYTES = 32
#: Decoded key sizes `parse_secret` accepts. Below 16 bytes (128 bits) a key is guessable in
#: principle; above 64 bytes HMAC-SHA256 hashes the key first, so longer adds nothing.
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 64
#: The default replay window, in seconds, on either side of the receiver's clock.
DEFAULT_TOLERANCE_S = 300.0

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SIGNATURE_VERSION = "v1"


class WebhookVerificationError(ValueError):
    """A delivery that must not be trusted; the message says why (never which secret)."""


def generate_secret() -> str:
    """A fresh `whsec_` secret of 32 bytes from `secrets`, shown once to the receiver's owner."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def parse_secret(secret: str) -> bytes:
    """The HMAC key in `secret`, with or without the `whsec_` prefix.

    Accepts standard base64 (padding required, surrounding whitespace ignored) that decodes to
    16 to 64 bytes. Raises ValueError otherwise: a mistyped secret must fail loudly at start-up,
    not sign every delivery with a key the receiver can never match.
    """
    text = secret.strip()
    text = text.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"webhook secret is not valid base64 after {SECRET_PREFIX!r}") from exc
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"webhook secret decodes to {len(key)} bytes; "
            f"expected {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES}"
        )
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`; body stays bytes so none is re-encoded."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<signature>` entry for one delivery attempt."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        # A float would sign "1700000000.5", which no receiver reconstructs from the header.
        raise TypeError("timestamp must be integer unix seconds")
    return f"{SIGNATURE_VERSION},{_signature(parse_secret(secret), msg_id, timestamp, body)}"


def signature_headers(
    secret: str, msg_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The three headers for one attempt; sign each retry afresh so its timestamp is current."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(secret, msg_id, ts, body),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    """The header's value whatever its case: frameworks and proxies disagree on capitalisation."""
    for key, value in headers.items():
        if key.lower() == name and value.strip():
            return value.strip()
    raise WebhookVerificationError(f"missing {name} header")


def _check_timestamp(raw: str, tolerance_s: float, now: float) -> int:
    """The parsed timestamp, if within `tolerance_s` of `now` either way (replay protection)."""
    if not raw.isascii() or not raw.isdigit():
        raise WebhookVerificationError(f"invalid {TIMESTAMP_HEADER} header: {raw[:32]!r}")
    timestamp = int(raw)
    if now - timestamp > tolerance_s:
        raise WebhookVerificationError(f"message timestamp too old ({now - timestamp:.0f}s ago)")
    if timestamp - now > tolerance_s:
        raise WebhookVerificationError(
            f"message timestamp too far in the future ({timestamp - now:.0f}s ahead)"
        )
    return timestamp


def _any_matches(expected: str, header: str) -> bool:
    """Whether any `v1,` entry equals `expected`; every entry is compared in constant time."""
    found = False
    for entry in header.split():
        version, _, candidate = entry.partition(",")
        if version == SIGNATURE_VERSION and candidate:
            found |= hmac.compare_digest(expected.encode(), candidate.encode("utf-8", "replace"))
    return found


def verify(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """The delivery's JSON object, once its signature and timestamp check out.

    Pass the raw body exactly as received: re-serialised JSON changes bytes and fails. Raises
    WebhookVerificationError naming the reason (missing header, bad or stale timestamp, no
    matching signature, body not a JSON object). A bad `secret` raises plain ValueError, since
    that is the receiver's configuration error, not the sender's.
    """
    key = parse_secret(secret)
    raw = body.encode() if isinstance(body, str) else body
    msg_id = _header(headers, ID_HEADER)
    stamp = _header(headers, TIMESTAMP_HEADER)
    signatures = _header(headers, SIGNATURE_HEADER)
    timestamp = _check_timestamp(stamp, tolerance_s, time.time() if now is None else now)
    if not _any_matches(_signature(key, msg_id, timestamp, raw), signatures):
        raise WebhookVerificationError("no matching signature")
    return _json_object(raw)


def _json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object: signed but unparseable bodies are still refused clearly."""
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookVerificationError("body is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise WebhookVerificationError("body is not a JSON object")
    return payload
