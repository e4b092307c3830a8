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

import ipaddress
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpcore

from sdapi import __version__
from sdapi.errors import ConfigurationError, ImageFetchFailed, UnsafeUrl

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

USER_AGENT = f"sdapi/{__version__}"
ALLOWED_SCHEMES = ("http", "https")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Credentials never follow a redirect to another origin (the webhook caller may send them).
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
#: Framing headers are ours to set; a caller's value could desynchronise the request.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_READ_CHUNK = 64 * 1024

# A DNS label per RFC 1123 (underscores tolerated: some internal names use them).
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Networks that carry an IPv4 address in their last 32 bits (RFC 6052 NAT64, RFC 4291 compat).
_V4_IN_LOW_BITS = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("::/96"),
)
_SHARED_V4 = ipaddress.IPv4Network("100.64.0.0/10")
_BROADCAST_V4 = ipaddress.IPv4Address("255.255.255.255")


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class UrlPolicy:
    """What user URLs may reach and how much they may cost.

    `allow` entries are hostnames (exact, case-insensitive: every address the name resolves to is
    then trusted) or IP addresses / CIDR ranges (`10.0.0.0/8`, `::1`, `[::1]`). A CIDR with host
    bits set (`172.17.0.1/16`) means its network, as operators usually intend.
    """

    allow: tuple[str, ...] = ()
    max_bytes: int = 20 * 1024 * 1024
    #: Budget for the whole fetch: every hop, DNS, connect, TLS and body together.
    timeout_s: float = 15.0
    max_redirects: int = 5
    _names: frozenset[str] = field(init=False, repr=False, compare=False)
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in self.allow:
            parsed = _parse_allow_entry(entry)
            if isinstance(parsed, str):
                names.add(parsed)
            else:
                networks.append(parsed)
        _check_limits(self.max_bytes, self.timeout_s, self.max_redirects)
        # Frozen dataclass: the parsed forms are derived once, here.
        object.__setattr__(self, "_names", frozenset(names))
        object.__setattr__(self, "_networks", tuple(networks))

    @classmethod
    def from_entries(cls, entries: Iterable[str], **kw: Any) -> UrlPolicy:
        """Build a policy from operator input: strips, drops empties, splits on commas."""
        if isinstance(entries, str):  # one env-var string, not an iterable of characters
            entries = [entries]
        parts = (part.strip() for entry in entries for part in entry.split(","))
        return cls(allow=tuple(part for part in parts if part), **kw)

    def allows_name(self, host: str) -> bool:
        return _normalise_name(host) in self._names

    def allows_address(self, address: IPAddress) -> bool:
        unwrapped = _unwrap_mapped(address)
        return any(address in net or unwrapped in net for net in self._networks)


def _check_limits(max_bytes: int, timeout_s: float, max_redirects: int) -> None:
    if max_bytes <= 0:
        raise ConfigurationError(f"URL fetch max_bytes must be positive, got {max_bytes}")
    if not timeout_s > 0:
        raise ConfigurationError(f"URL fetch timeout must be positive, got {timeout_s}")
    if max_redirects < 0:
        raise ConfigurationError(f"URL fetch max_redirects must be >= 0, got {max_redirects}")


def _parse_allow_entry(raw: str) -> str | IPNetwork:
    """One allow-list entry as a normalised hostname or a network; ConfigurationError if bad."""
    entry = raw.strip()
    bare = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
    try:
        return ipaddress.ip_network(bare, strict=False)
    except ValueError:
        pass
    name = _normalise_name(entry)
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ConfigurationError(
            f"allow-list entry {raw!r} is neither a hostname nor an IP address or CIDR range"
        )
    # `2130706433` or `0x7f.1` would silently mean an IP to the resolver: say so instead.
    if labels[-1].isdigit() or labels[-1].startswith("0x"):
        raise ConfigurationError(
            f"allow-list entry {raw!r} looks like a numeric address; write it as a dotted IP"
        )
    return name


def _normalise_name(host: str) -> str:
    return host.strip().lower().rstrip(".")


# --------------------------------------------------------------------------- address rules


def _unwrap_mapped(address: IPAddress) -> IPAddress:
    """`::ffff:a.b.c.d` is the IPv4 host a.b.c.d on a dual-stack socket."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _kind(address: IPAddress) -> str | None:
    """Why `address` is not globally routable, or None when it is."""
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address == _BROADCAST_V4, "broadcast"),
        (address in _SHARED_V4, "shared address space (CGNAT)"),
        (getattr(address, "is_site_local", False), "site-local"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not globally routable"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a transition form (6to4, Teredo, NAT64, compat) would reach."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in net for net in _V4_IN_LOW_BITS) and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why `address` is refused by default ("is private", ...), or None if it is public."""
    target = _unwrap_mapped(address)
    kind = _kind(target)
    if kind and target is not address:
        return f"maps to {target}, which is {kind}"
    if kind or not isinstance(target, ipaddress.IPv6Address):
        return f"is {kind}" if kind else None
    inner = _embedded_v4(target)
    inner_kind = _kind(inner) if inner is not None else None
    return f"embeds {inner}, which is {inner_kind}" if inner_kind else None


def _literal_address(host: str) -> IPAddress | None:
    """`host` as an IP if it is one, including the legacy spellings the C resolver accepts.

    getaddrinfo() reads `2130706433`, `0177.0.0.1` and `0x7f.1` through inet_aton() as
    127.0.0.1; parsing them the same way here means they are judged as the address they are.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not re.fullmatch(r"[0-9a-fA-Fx.]+", host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _resolve(host: str, port: int, timeout: float) -> list[IPAddress]:
    """Every address `host` resolves to, within `timeout` (getaddrinfo itself has none)."""
    literal = _literal_address(host)
    if literal is not None:
        return [literal]
    found: list[tuple[Any, ...]] = []
    failure: list[OSError] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            failure.append(exc)
        finally:
            done.set()

    # A daemon thread: a resolver stuck past the deadline must not hold up the fetch or exit.
    threading.Thread(target=lookup, name="sdapi-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise httpcore.ConnectTimeout(f"resolving {host} timed out")
    if failure:
        raise ImageFetchFailed(detail=f"could not resolve host {host}")
    addresses: list[IPAddress] = []
    for info in found:
        try:
            address = ipaddress.ip_address(info[4][0])
        except ValueError:  # an address family we do not speak: judge it unusable
            raise UnsafeUrl(detail=f"host {host} resolved to an unusable address") from None
        if address not in addresses:
            addresses.append(address)
    return addresses


def vet_addresses(host: str, addresses: list[IPAddress], policy: UrlPolicy) -> None:
    """Raise UnsafeUrl unless every address of `host` may be reached under `policy`."""
    if not addresses:
        raise ImageFetchFailed(detail=f"host {host} has no addresses")
    if policy.allows_name(host):
        return
    for address in addresses:
        reason = refusal_reason(address)
        if reason is None or policy.allows_address(address):
            continue
        where = "" if str(address) == host else f" of host {host}"
        raise UnsafeUrl(detail=f"address {address}{where} {reason}; not allowed")


# --------------------------------------------------------------------------- socket level


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
        addresses = _resolve(host, port, self._deadline.clamp(timeout, httpcore.ConnectTimeout))
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


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class _Target:
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


def parse_url(url: str) -> _Target:
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
    return _Target(scheme, host, None if port in (None, default) else port, path)


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
    if not host or len(host) > 253 or not all(_LABEL.match(x) for x in host.split(".")):
        raise UnsafeUrl(detail="URL has a missing or invalid host name")
    return host


def _quote(text: str) -> str:
    # Keep existing escapes and reserved characters; percent-encode the rest (spaces, UTF-8).
    return urllib.parse.quote(text, safe="/%:@!$&'()*+,;=-._~?[]")


# --------------------------------------------------------------------------- fetching


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
    target: _Target, hop: _Hop, status: int, headers: Mapping[str, str]
) -> tuple[_Target, _Hop]:
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
    target: _Target, hop: _Hop, policy: UrlPolicy, deadline: _Deadline
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
    target: _Target, hop: _Hop, policy: UrlPolicy, deadline: _Deadline
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
