"""Parsing user URLs once, strictly, into the parts the fetcher uses."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

import httpcore

from sdapi.errors import UnsafeUrl
from sdapi.safeurl.policy import HOST_LABEL

ALLOWED_SCHEMES = ("http", "https")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --- URLs


@dataclass(frozen=True)
class Target:
    """A validated URL, split into exactly what httpcore is given (nothing is re-parsed)."""

    scheme: str
    host: str
    port: int | None
    path: str

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def origin(self) -> tuple[str, str, int | None]:
        return (self.scheme, self.host, self.port)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"

    def to_httpcore(self) -> httpcore.URL:
        return httpcore.URL(
            scheme=self.scheme.encode(),
            host=self.host.encode("ascii"),
            port=self.port,
            target=self.path.encode("ascii"),
        )


def parse_url(url: str) -> Target:
    """Validate a user URL: http(s) only, a plain host, no credentials; UnsafeUrl otherwise."""
    url = url.strip()
    if _CONTROL.search(url) or "\\" in url:
        # Parsers disagree about these (browsers read `\` as `/`); refuse instead of guessing.
        raise UnsafeUrl(detail="URL contains control characters or backslashes")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise UnsafeUrl(detail="URL could not be parsed") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = f"{scheme!r}" if scheme else "missing"
        raise UnsafeUrl(detail=f"URL scheme {shown} is not allowed; use http or https")
    if "@" in parts.netloc:
        raise UnsafeUrl(detail="URLs with credentials (user@host) are not allowed")
    try:
        port = parts.port
    except ValueError:
        raise UnsafeUrl(detail="URL has an invalid port") from None
    host = _parse_host(parts.netloc, parts.hostname or "")
    path = _quote(parts.path or "/") + (f"?{_quote(parts.query)}" if parts.query else "")
    default = 443 if scheme == "https" else 80
    return Target(scheme, host, None if port in (None, default) else port, path)


def _parse_host(netloc: str, hostname: str) -> str:
    """The ASCII host of a URL: an IPv6 literal, an IPv4/numeric form or a DNS name."""
    if netloc.startswith("["):
        try:
            address = ipaddress.IPv6Address(hostname)
        except ValueError:
            raise UnsafeUrl(detail="URL has an invalid IPv6 address") from None
        if address.scope_id:
            raise UnsafeUrl(detail="IPv6 zone identifiers are not allowed in URLs")
        return str(address)
    try:
        host = hostname.encode("idna").decode("ascii").rstrip(".")
    except UnicodeError:
        raise UnsafeUrl(detail="URL has an invalid host name") from None
    if not host or len(host) > 253 or not all(HOST_LABEL.match(x) for x in host.split(".")):
        raise UnsafeUrl(detail="URL has a missing or invalid host name")
    return host


def _quote(text: str) -> str:
    # Keep existing escapes and reserved characters; percent-encode the rest (spaces, UTF-8).
    return urllib.parse.quote(text, safe="/%:@!$&'()*+,;=-._~?[]")
