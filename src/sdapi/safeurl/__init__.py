"""The one place that fetches user-supplied URLs (init images, masks, webhooks), safe against SSRF.

`policy` says which addresses are allowed, `urls` parses a URL once, strictly, and `fetch` talks
to httpcore through a network backend that checks the address it is about to connect to (see
`sdapi.safeurl.fetch` for how the guard works).
"""

from __future__ import annotations

from sdapi.safeurl.fetch import FetchResult, fetch
from sdapi.safeurl.policy import UrlPolicy, refusal_reason, vet_addresses, vet_literal
from sdapi.safeurl.urls import parse_url

__all__ = [
    "FetchResult",
    "UrlPolicy",
    "fetch",
    "parse_url",
    "refusal_reason",
    "vet_addresses",
    "vet_literal",
]
