"""The one place that fetches user-supplied URLs (init images, masks, webhooks), safe against SSRF.

The guard lives at the socket: `fetch` talks to httpcore directly through `_GuardedBackend`, a
network backend whose `connect_tcp` resolves the host once, refuses it unless EVERY address it
resolves to is allowed, and then connects to one of those vetted addresses itself. The address
checked is therefore the address connected, so DNS rebinding between check and connect cannot
happen, and each redirect hop opens a fresh connection that goes through the same check. TLS still
runs against the original hostname: httpcore passes `server_hostname` from the request origin
(`HTTPConnection._connect`), and the origin keeps the name while only the socket gets the IP.

An address is allowed when it is globally routable (and embeds no private IPv4 address through
the IPv4-mapped, 6to4, Teredo, NAT64 or IPv4-compatible forms), or when the operator allow-list
names its host or covers it by an IP/CIDR entry. httpcore reads no proxy settings from the
environment, so nothing reroutes the connection either.
"""

from __future__ import annotations

import ssl
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpcore

from sdapi import __version__
from sdapi.errors import ImageFetchFailed, UnsafeUrl
from sdapi.safeurl.policy import UrlPolicy, resolve, vet_addresses
from sdapi.safeurl.urls import Target, parse_url

USER_AGENT = f"sdapi/{__version__}"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Credentials never follow a redirect to another origin (the webhook caller may send them).
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
#: Framing headers are ours to set; a caller's value could desynchronise the request.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_READ_CHUNK = 64 * 1024


# --- socket level


class _Deadline:
    """The overall budget of one fetch, shared by every connect, read and write."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()

    def clamp(self, timeout: float | None, error: type[httpcore.TimeoutException]) -> float:
        """The smaller of an operation's own timeout and what is left; raise if nothing is."""
        left = self.remaining()
        if left <= 0:
            raise error(f"the {self.seconds:g} s fetch deadline passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A stream whose every operation also stops at the fetch deadline (no slow-drip bodies)."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        # httpcore hands us the origin's hostname here: SNI and certificate checks use the name,
        # never the IP we connected to.
        timeout = self._deadline.clamp(timeout, httpcore.ConnectTimeout)
        tls = self._inner.start_tls(ssl_context, server_hostname=server_hostname, timeout=timeout)
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, but connecting only to addresses that passed the policy."""

    def __init__(self, policy: UrlPolicy, deadline: _Deadline) -> None:
        self._policy = policy
        self._deadline = deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = resolve(host, port, self._deadline.clamp(timeout, httpcore.ConnectTimeout))
        vet_addresses(host, addresses, self._policy)
        last_error: Exception | None = None
        for address in addresses:
            # The vetted address itself is what we dial: no second lookup, nothing to rebind.
            try:
                stream = self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=self._deadline.clamp(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                last_error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise last_error or httpcore.ConnectError(f"no address of {host} answered")

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise UnsafeUrl(detail="unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# --- fetching


@dataclass(frozen=True)
class FetchResult:
    url: str
    status: int
    headers: Mapping[str, str]
    content: bytes


@dataclass
class _Hop:
    method: str
    body: bytes | None
    headers: dict[str, str]


def fetch(
    url: str,
    policy: UrlPolicy,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> FetchResult:
    """Fetch a user URL under `policy`, following redirects; every hop is checked again.

    Raises UnsafeUrl for refused URLs and addresses, ImageFetchFailed for everything else
    (network errors, timeouts, too many redirects, oversized bodies, non-2xx answers).
    """
    deadline = _Deadline(policy.timeout_s)
    target = parse_url(url)
    hop = _Hop(method.upper(), body, _request_headers(headers))
    redirects = 0
    while True:
        status, response_headers, content = _send(target, hop, policy, deadline)
        if status not in REDIRECT_STATUSES:
            if not 200 <= status < 300:
                raise ImageFetchFailed(detail=f"HTTP {status} from {target.host}")
            return FetchResult(str(target), status, response_headers, content)
        if redirects >= policy.max_redirects:
            raise ImageFetchFailed(detail=f"too many redirects (more than {policy.max_redirects})")
        redirects += 1
        target, hop = _follow(target, hop, status, response_headers)


def _request_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    merged = {"user-agent": USER_AGENT, "accept": "*/*", "accept-encoding": "identity"}
    for name, value in (headers or {}).items():
        if name.lower() not in _RESERVED_HEADERS:
            merged[name.lower()] = value
    return merged


def _follow(
    target: Target, hop: _Hop, status: int, headers: Mapping[str, str]
) -> tuple[Target, _Hop]:
    """The next URL and request after a redirect (the URL is validated again, fully)."""
    location = headers.get("location")
    if not location:
        raise ImageFetchFailed(detail=f"HTTP {status} redirect without a Location")
    following = parse_url(urllib.parse.urljoin(str(target), location))
    method, body = hop.method, hop.body
    # As browsers do: 303 always, and 301/302 after a POST, become a GET without a body.
    if status == 303 or (status in (301, 302) and method == "POST"):
        method = "HEAD" if method == "HEAD" else "GET"
        body = None
    request_headers = dict(hop.headers)
    if following.origin != target.origin:
        for name in _CREDENTIAL_HEADERS:
            request_headers.pop(name, None)
    return following, _Hop(method, body, request_headers)


def _send(
    target: Target, hop: _Hop, policy: UrlPolicy, deadline: _Deadline
) -> tuple[int, dict[str, str], bytes]:
    """One hop, with transport failures turned into ImageFetchFailed and a short reason."""
    try:
        return _exchange(target, hop, policy, deadline)
    except ImageFetchFailed:
        raise
    except httpcore.TimeoutException:
        detail = f"timed out fetching from {target.host} (limit {deadline.seconds:g} s)"
    except httpcore.ConnectError as exc:
        detail = f"could not connect to {target.host}: {_reason(exc)}"
    except httpcore.ProtocolError as exc:
        detail = f"bad HTTP response from {target.host}: {_reason(exc)}"
    except (httpcore.NetworkError, OSError) as exc:
        detail = f"network error talking to {target.host}: {_reason(exc)}"
    # Raised outside the handlers: the client gets the reason, never a chained traceback.
    raise ImageFetchFailed(detail=detail)


def _exchange(
    target: Target, hop: _Hop, policy: UrlPolicy, deadline: _Deadline
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh pool, so its connection is always made (and vetted) anew."""
    left = deadline.clamp(None, httpcore.ConnectTimeout)
    timeouts = {"connect": left, "read": left, "write": left, "pool": left}
    # Our own Host header: httpcore's default would not bracket an IPv6 literal.
    headers = [("Host", target.netloc), *hop.headers.items()]
    content = hop.body
    if content is None and hop.method in ("POST", "PUT", "PATCH"):
        content = b""  # httpcore then sends Content-Length: 0, which some servers insist on
    backend = _GuardedBackend(policy, deadline)
    with (
        httpcore.ConnectionPool(network_backend=backend, retries=0, max_connections=1) as pool,
        pool.stream(
            hop.method,
            target.to_httpcore(),
            headers=headers,
            content=content,
            extensions={"timeout": timeouts},
        ) as response,
    ):
        response_headers = _response_headers(response.headers)
        if not 200 <= response.status < 300:
            return response.status, response_headers, b""  # redirects and errors: body unused
        content = _read_capped(response.iter_stream(), response_headers, policy.max_bytes)
        return response.status, response_headers, content


def _response_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _read_capped(chunks: Iterator[bytes], headers: Mapping[str, str], max_bytes: int) -> bytes:
    """The body, refusing before reading when declared too big and while reading otherwise."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ImageFetchFailed(detail=f"response is {declared} bytes; the limit is {max_bytes}")
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise ImageFetchFailed(detail=f"response is larger than the {max_bytes} byte limit")
    return bytes(body)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
