"""The SSRF guard: refusals at the check, redirects, limits and timeouts, against a real server.

A ThreadingHTTPServer on 127.0.0.1 plays the remote host. Loopback is refused by default, so tests
that must reach it allow it explicitly; refusal tests forbid any connection at all, which proves
the refusal came from the check and not from a failed connect.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import pytest
from PIL import Image

import sdapi
from sdapi.errors import ConfigurationError, ImageFetchFailed, UnsafeUrl
from sdapi.safeurl import FetchResult, UrlPolicy, fetch, refusal_reason

LOOPBACK = UrlPolicy(allow=("127.0.0.1",))


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png_bytes()


class _Handler(BaseHTTPRequestHandler):
    """Routes for every scenario; HTTP/1.0, so each response ends with the connection."""

    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._route(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._route(self.rfile.read(length))

    def _route(self, body: bytes) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.server.log.append((self.command, url.path))
        routes = {
            "/png": lambda: self._send(200, PNG, "image/png"),
            "/redirect-png": lambda: self._redirect(302, "/png"),
            "/redirect": lambda: self._redirect(int(query.get("code", 302)), query["to"]),
            "/loop": lambda: self._redirect(302, "/loop"),
            "/echo": lambda: self._echo(body),
            "/huge": self._huge,
            "/stream": self._stream,
            "/slow": self._slow,
            "/drip": self._drip,
        }
        with contextlib.suppress(OSError):  # the client hangs up on purpose (limits, timeouts)
            routes.get(url.path, lambda: self._send(404, b"not found", "text/plain"))()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, status: int, location: str) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _echo(self, body: bytes) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        seen = {"method": self.command, "headers": headers, "body": body.decode()}
        self._send(200, json.dumps(seen).encode(), "application/json")

    def _huge(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(50 * 1024 * 1024))
        self.end_headers()
        self._write_until_stopped()

    def _stream(self) -> None:
        # No Content-Length: the body ends only when the connection does (here: never).
        self.send_response(200)
        self.end_headers()
        self._write_until_stopped()

    def _write_until_stopped(self) -> None:
        chunk = b"x" * 65536
        while not self.server.stopping.is_set():
            self.wfile.write(chunk)

    def _slow(self) -> None:
        self.server.stopping.wait(5)
        self._send(200, b"late", "text/plain")

    def _drip(self) -> None:
        # Each read succeeds quickly; only an overall deadline can stop this body.
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            if self.server.stopping.wait(0.05):
                return
            self.wfile.write(b"x")
            self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.log: list[tuple[str, str]] = []
        self.stopping = threading.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


@pytest.fixture(scope="module")
def _module_server() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def server(_module_server: _Server) -> _Server:
    _module_server.log.clear()
    return _module_server


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a TCP connection fails the test outright."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", refuse)


def _fake_dns(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> list[str]:
    """Answer getaddrinfo from `table` for the names in it; returns the names looked up."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in table:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        return [_addrinfo(address, port) for address in table[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def _addrinfo(address: str, port: int) -> tuple[Any, ...]:
    if ipaddress.ip_address(address).version == 4:
        return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
    return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))


# --------------------------------------------------------------------------- the SSRF battery


@pytest.mark.usefixtures("no_connect")
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1/", "address 127.0.0.1 is loopback"),
        ("http://localhost/", "of host localhost is loopback"),
        ("http://10.0.0.1/", "address 10.0.0.1 is private"),
        ("http://172.16.0.1/", "address 172.16.0.1 is private"),
        ("http://192.168.1.1/", "address 192.168.1.1 is private"),
        ("http://169.254.169.254/latest/meta-data/", "address 169.254.169.254 is link-local"),
        ("http://[::1]/", "address ::1 is loopback"),
        ("http://[::ffff:127.0.0.1]/", "maps to 127.0.0.1, which is loopback"),
        ("http://[::ffff:7f00:1]/", "maps to 127.0.0.1, which is loopback"),
        ("http://2130706433/", "address 127.0.0.1 of host 2130706433 is loopback"),
        ("http://0177.0.0.1/", "address 127.0.0.1 of host 0177.0.0.1 is loopback"),
        ("http://0x7f000001/", "address 127.0.0.1 of host 0x7f000001 is loopback"),
        ("http://0x7f.1/", "address 127.0.0.1 of host 0x7f.1 is loopback"),
        ("http://0.0.0.0/", "address 0.0.0.0 is unspecified"),
        ("http://100.64.0.1/", "address 100.64.0.1 is shared address space"),
        ("http://[fe80::1]/", "address fe80::1 is link-local"),
        ("http://224.0.0.1/", "address 224.0.0.1 is multicast"),
        ("http://255.255.255.255/", "address 255.255.255.255 is broadcast"),
        ("http://[fd00:ec2::254]/", "address fd00:ec2::254 is private"),
        ("http://[2002:7f00:1::]/", "embeds 127.0.0.1, which is loopback"),
        ("https://10.0.0.1:8443/x", "address 10.0.0.1 is private"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("ftp://example.com/x", "scheme 'ftp' is not allowed"),
        ("gopher://x/", "scheme 'gopher' is not allowed"),
        ("//example.com/x", "scheme missing is not allowed"),
        ("http://user:pw@8.8.8.8/", "credentials"),
        ("http://8.8.8.8\\@127.0.0.1/", "backslashes"),
        ("http://[::1/", "could not be parsed"),
    ],
)
def test_refused_at_the_check(url: str, expected: str) -> None:
    with pytest.raises(UnsafeUrl) as caught:
        fetch(url, UrlPolicy())
    assert expected in (caught.value.detail or "")
    # The wire message stays the class message; only the detail explains.
    assert caught.value.message == "Unable to fetch image from provided URL"


@pytest.mark.usefixtures("no_connect")
def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"mixed.test": ["93.184.216.34", "10.1.2.3"]})
    with pytest.raises(UnsafeUrl) as caught:
        fetch("http://mixed.test/", UrlPolicy())
    assert caught.value.detail == "address 10.1.2.3 of host mixed.test is private; not allowed"


def test_connects_to_the_vetted_address_without_a_second_lookup(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebinding resolver would answer differently the second time; there must be no second time.
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    asked: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host != "images.test":
            return real(host, port, *args, **kwargs)
        asked.append(host)
        return [_addrinfo(address, port) for address in next(answers)]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    result = fetch(f"http://images.test:{server.server_port}/echo", LOOPBACK)
    seen = json.loads(result.content)
    assert asked == ["images.test"]
    assert seen["headers"]["host"] == f"images.test:{server.server_port}"


def test_tls_uses_the_hostname_for_sni(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"images.test": ["127.0.0.1"]})
    listener = socket.create_server(("127.0.0.1", 0))
    hello: list[bytes] = []

    def accept_one() -> None:
        listener.settimeout(5)
        conn, _ = listener.accept()
        with conn:
            hello.append(_read_tls_record(conn))

    thread = threading.Thread(target=accept_one)
    thread.start()
    try:
        with pytest.raises(ImageFetchFailed) as caught:
            url = f"https://images.test:{listener.getsockname()[1]}/"
            fetch(url, UrlPolicy(allow=("images.test",), timeout_s=5))
    finally:
        thread.join(5)
        listener.close()
    assert not isinstance(caught.value, UnsafeUrl)
    assert hello, "no TLS ClientHello reached the vetted address"
    assert _sni_of(hello[0]) == "images.test"


def _read_tls_record(conn: socket.socket) -> bytes:
    data = b""
    while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _sni_of(record: bytes) -> str | None:
    """The server_name extension of a TLS ClientHello record (RFC 8446 4.1.2, RFC 6066 3)."""
    assert record[0] == 0x16 and record[5] == 0x01, "not a ClientHello"
    pos = 5 + 4 + 2 + 32  # record header, handshake header, legacy_version, random
    pos += 1 + record[pos]  # session id
    pos += 2 + int.from_bytes(record[pos : pos + 2], "big")  # cipher suites
    pos += 1 + record[pos]  # compression methods
    end = pos + 2 + int.from_bytes(record[pos : pos + 2], "big")
    pos += 2
    while pos < end:
        kind = int.from_bytes(record[pos : pos + 2], "big")
        size = int.from_bytes(record[pos + 2 : pos + 4], "big")
        if kind == 0:  # server_name: list length (2), name type (1), name length (2), name
            name_len = int.from_bytes(record[pos + 7 : pos + 9], "big")
            return record[pos + 9 : pos + 9 + name_len].decode("ascii")
        pos += 4 + size
    return None


ODD_LOOPBACK_SPELLINGS = ["2130706433", "0177.0.0.1", "0x7f000001", "0x7f.1", "127.1"]


@pytest.mark.parametrize("host", ODD_LOOPBACK_SPELLINGS)
def test_the_system_resolver_reads_odd_spellings_as_loopback(host: str) -> None:
    # Why these must be judged as 127.0.0.1: that is where a socket would really go.
    infos = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)
    assert {info[4][0] for info in infos} == {"127.0.0.1"}


@pytest.mark.usefixtures("no_connect")
@pytest.mark.parametrize("host", ODD_LOOPBACK_SPELLINGS)
def test_odd_spellings_are_refused_without_asking_the_resolver(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_dns(*args: object, **kwargs: object) -> None:
        raise AssertionError("the resolver was asked")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(UnsafeUrl) as caught:
        fetch(f"http://{host}/", UrlPolicy())
    assert caught.value.detail == f"address 127.0.0.1 of host {host} is loopback; not allowed"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("2002:808:808::", None),
        ("64:ff9b::a00:1", "is reserved"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "is private"),
        ("::127.0.0.1", "is reserved"),
        ("198.18.0.1", "is private"),
    ],
)
def test_refusal_reason(address: str, reason: str | None) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


# --------------------------------------------------------------------------- allowed fetches


def test_fetches_from_an_allowed_address(server: _Server) -> None:
    result = fetch(f"{server.base}/png", LOOPBACK)
    assert isinstance(result, FetchResult)
    assert (result.status, result.content) == (200, PNG)
    assert result.headers["content-type"] == "image/png"
    assert result.url == f"{server.base}/png"


def test_sends_the_sdapi_user_agent(server: _Server) -> None:
    seen = json.loads(fetch(f"{server.base}/echo", LOOPBACK).content)
    assert seen["headers"]["user-agent"] == f"sdapi/{sdapi.__version__}"


def test_follows_a_redirect(server: _Server) -> None:
    result = fetch(f"{server.base}/redirect-png", LOOPBACK)
    assert result.content == PNG
    assert result.url == f"{server.base}/png"
    assert server.log == [("GET", "/redirect-png"), ("GET", "/png")]


def test_allow_list_by_cidr(server: _Server) -> None:
    policy = UrlPolicy.from_entries(["10.0.0.0/8, 127.0.0.0/8"])
    assert fetch(f"{server.base}/png", policy).content == PNG


def test_cidr_that_does_not_cover_the_address_refuses(server: _Server) -> None:
    with pytest.raises(UnsafeUrl, match=r"^Unable"):
        fetch(f"{server.base}/png", UrlPolicy(allow=("10.0.0.0/8",)))
    assert server.log == []


@pytest.fixture
def only_loopback_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections to 127.0.0.1 go through; any other connection attempt fails the test."""
    real = httpcore.SyncBackend.connect_tcp

    def guarded(self: httpcore.SyncBackend, host: str, *args: Any, **kwargs: Any) -> Any:
        if host != "127.0.0.1":
            raise AssertionError(f"a connection to {host} was attempted")
        return real(self, host, *args, **kwargs)

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", guarded)


@pytest.mark.usefixtures("only_loopback_connects")
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://10.255.255.1/", "address 10.255.255.1 is private; not allowed"),
        ("http://[::1]:{port}/png", "address ::1 is loopback; not allowed"),
        ("http://127.0.0.1:{port}/png", "address 127.0.0.1 is loopback; not allowed"),
    ],
)
def test_redirect_from_a_name_allowed_host_to_a_private_address_is_refused(
    server: _Server, target: str, expected: str
) -> None:
    location = urllib.parse.quote(target.format(port=server.server_port), safe="")
    url = f"http://localhost:{server.server_port}/redirect?to={location}"
    with pytest.raises(UnsafeUrl) as caught:
        fetch(url, UrlPolicy(allow=("localhost",)))
    assert caught.value.detail == expected
    assert server.log == [("GET", "/redirect")]  # the first hop was really made


def test_redirect_to_cloud_metadata_is_refused(server: _Server) -> None:
    location = urllib.parse.quote("http://169.254.169.254/latest/meta-data/", safe="")
    with pytest.raises(UnsafeUrl) as caught:
        fetch(f"{server.base}/redirect?to={location}", LOOPBACK)
    assert caught.value.detail == "address 169.254.169.254 is link-local; not allowed"


def test_redirect_to_another_scheme_is_refused(server: _Server) -> None:
    with pytest.raises(UnsafeUrl) as caught:
        fetch(f"{server.base}/redirect?to=file%3A%2F%2F%2Fetc%2Fpasswd", LOOPBACK)
    assert "scheme 'file'" in (caught.value.detail or "")


def test_too_many_redirects(server: _Server) -> None:
    policy = UrlPolicy(allow=("127.0.0.1",), max_redirects=3)
    with pytest.raises(ImageFetchFailed) as caught:
        fetch(f"{server.base}/loop", policy)
    assert type(caught.value) is ImageFetchFailed
    assert caught.value.detail == "too many redirects (more than 3)"
    assert server.log == [("GET", "/loop")] * 4


def test_no_redirects_allowed(server: _Server) -> None:
    with pytest.raises(ImageFetchFailed, match=r"^Unable"):
        fetch(f"{server.base}/redirect-png", UrlPolicy(allow=("127.0.0.1",), max_redirects=0))
    assert server.log == [("GET", "/redirect-png")]


def test_303_turns_a_post_into_a_get_without_body(server: _Server) -> None:
    url = f"{server.base}/redirect?code=303&to=/echo"
    seen = json.loads(fetch(url, LOOPBACK, method="POST", body=b'{"a": 1}').content)
    assert (seen["method"], seen["body"]) == ("GET", "")


def test_307_keeps_the_post_and_its_body(server: _Server) -> None:
    url = f"{server.base}/redirect?code=307&to=/echo"
    headers = {"Content-Type": "application/json", "X-Signature": "abc"}
    result = fetch(url, LOOPBACK, method="POST", body=b'{"a": 1}', headers=headers)
    seen = json.loads(result.content)
    assert (seen["method"], seen["body"]) == ("POST", '{"a": 1}')
    assert seen["headers"]["x-signature"] == "abc"


# --------------------------------------------------------------------------- limits and failures


def test_declared_body_over_the_limit(server: _Server) -> None:
    policy = UrlPolicy(allow=("127.0.0.1",), max_bytes=1000)
    with pytest.raises(ImageFetchFailed) as caught:
        fetch(f"{server.base}/huge", policy)
    assert caught.value.detail == f"response is {50 * 1024 * 1024} bytes; the limit is 1000"


def test_streamed_body_over_the_limit(server: _Server) -> None:
    policy = UrlPolicy(allow=("127.0.0.1",), max_bytes=100_000, timeout_s=5)
    started = time.monotonic()
    with pytest.raises(ImageFetchFailed) as caught:
        fetch(f"{server.base}/stream", policy)
    assert caught.value.detail == "response is larger than the 100000 byte limit"
    assert time.monotonic() - started < 2


def test_slow_server_times_out(server: _Server) -> None:
    policy = UrlPolicy(allow=("127.0.0.1",), timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(ImageFetchFailed) as caught:
        fetch(f"{server.base}/slow", policy)
    assert "timed out" in (caught.value.detail or "")
    assert 0.4 < time.monotonic() - started < 1.5


def test_overall_deadline_stops_a_dripping_body(server: _Server) -> None:
    policy = UrlPolicy(allow=("127.0.0.1",), timeout_s=0.6)
    started = time.monotonic()
    with pytest.raises(ImageFetchFailed) as caught:
        fetch(f"{server.base}/drip", policy)
    assert "timed out" in (caught.value.detail or "")
    assert 0.5 < time.monotonic() - started < 1.5


def test_not_found(server: _Server) -> None:
    with pytest.raises(ImageFetchFailed) as caught:
        fetch(f"{server.base}/missing", LOOPBACK)
    assert type(caught.value) is ImageFetchFailed
    assert caught.value.detail == "HTTP 404 from 127.0.0.1"


def test_connection_refused_is_a_fetch_failure_not_a_refusal() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(ImageFetchFailed) as caught:
        fetch(f"http://127.0.0.1:{port}/", LOOPBACK)
    assert type(caught.value) is ImageFetchFailed
    assert (caught.value.detail or "").startswith("could not connect to 127.0.0.1")


def test_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(ImageFetchFailed) as caught:
        fetch("http://nowhere.test/", UrlPolicy())
    assert caught.value.detail == "could not resolve host nowhere.test"


# --------------------------------------------------------------------------- configuration


def test_from_entries_splits_strips_and_validates() -> None:
    policy = UrlPolicy.from_entries([" LocalHost , 10.0.0.0/8", "", "[::1]", "172.17.0.1/16"])
    assert policy.allow == ("LocalHost", "10.0.0.0/8", "[::1]", "172.17.0.1/16")
    assert policy.allows_name("localhost.")
    assert policy.allows_address(ipaddress.ip_address("10.9.8.7"))
    assert policy.allows_address(ipaddress.ip_address("::1"))
    assert policy.allows_address(ipaddress.ip_address("172.17.200.1"))
    assert not policy.allows_address(ipaddress.ip_address("192.168.0.1"))


def test_from_entries_takes_a_single_string() -> None:
    assert UrlPolicy.from_entries("a.example, 127.0.0.1").allow == ("a.example", "127.0.0.1")


@pytest.mark.parametrize(
    "entry", ["http://host", "host:8080", "*.example.com", "10.0.0.0/33", "2130706433", "a..b"]
)
def test_bad_allow_entries_are_one_clear_line(entry: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        UrlPolicy.from_entries([entry])
    assert repr(entry) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_limits_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="max_bytes"):
        UrlPolicy(max_bytes=0)
