"""Webhook signing per Standard Webhooks (https://www.standardwebhooks.com).

sdapi signs each delivery with the `webhook-id`, `webhook-timestamp` and `webhook-signature`
headers. A receiver checks one with the raw body, the request headers and its `whsec_` secret::

    from sdapi.webhooks import WebhookVerificationError, verify

    try:
        event = verify(request_body_bytes, request_headers, secret="whsec_...")
    except WebhookVerificationError as exc:
        return 400, str(exc)  # forged, tampered or replayed: do not act on it

Importing this package pulls in only the standard library, so receivers can use it without the
server's dependencies. (`sdapi.webhooks.secret`, the server's secret file, is not re-exported.)
"""

from __future__ import annotations

from sdapi.webhooks.signing import (
    WebhookVerificationError,
    generate_secret,
    sign,
    signature_headers,
    verify,
)

__all__ = [
    "WebhookVerificationError",
    "generate_secret",
    "sign",
    "signature_headers",
    "verify",
]
