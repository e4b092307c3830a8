"""Which hosts and addresses user URLs may reach: the operator's allow-list, the address rules."""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpcore

from sdapi.errors import ConfigurationError, ImageFetchFailed, UnsafeUrl

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A DNS label per RFC 1123 (underscores tolerated: some internal names use them).
HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
# Networks that carry an IPv4 address in their last 32 bits (RFC 6052 NAT64, RFC 4291 compat).
_V4_IN_LOW_BITS = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("::/96"),
)
_SHARED_V4 = ipaddress.IPv4Network("100.64.0.0/10")
_BROADCAST_V4 = ipaddress.IPv4Address("255.255.255.255")


# --- policy


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
    if not name or len(name) > 253 or not all(HOST_LABEL.match(label) for label in labels):
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


# --- address rules


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


def resolve(host: str, port: int, timeout: float) -> list[IPAddress]:
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


def vet_literal(host: str, policy: UrlPolicy) -> None:
    """Refuse now a host that is a disallowed IP literal (a name is checked when connecting)."""
    literal = _literal_address(host)
    if literal is not None:
        vet_addresses(host, [literal], policy)


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
