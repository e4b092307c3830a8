"""Images in an S3-compatible bucket, shared by every API replica and worker on every machine.

Chosen by `--storage s3://bucket` or `s3://bucket/some/prefix`; an image `generations/x.png` is
the object `some/prefix/generations/x.png`. The endpoint (AWS, MinIO, Ceph, R2, ...), region and
credentials come from the settings; empty values leave boto3's own lookup (AWS variables, files,
instance roles) in charge.

Opening checks the bucket once, quickly and without retries, so bad configuration ends the
process at start with one clear `ConfigurationError` line. After that, every call has short
timeouts and a few bounded retries, and any failure becomes a `StorageError` whose detail names
the reason but never the endpoint or a botocore traceback (the detail reaches API clients).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from sdapi.errors import ConfigurationError, StorageError
from sdapi.storage.base import content_type, is_valid_name

#: How an operator sets the credentials, for error messages.
CREDENTIAL_SETTINGS = (
    "--s3-access-key-id and --s3-secret-access-key"
    " (SDAPI_S3_ACCESS_KEY_ID, SDAPI_S3_SECRET_ACCESS_KEY)"
)

if TYPE_CHECKING:
    from sdapi.settings import Settings

#: Runtime calls: a dead endpoint is noticed in seconds, not after the OS's minutes-long default.
CONNECT_TIMEOUT_S = 3.0
#: Generous enough for a multi-megabyte PNG over a slow link, short enough not to pin a worker.
READ_TIMEOUT_S = 30.0
#: Total attempts per call (first try included). botocore's "standard" mode retries throttling,
#: 5xx answers and dropped connections with jittered exponential backoff, and its retry quota
#: stops retrying when everything is failing, so an outage cannot multiply the load.
MAX_ATTEMPTS = 3
#: Connections kept per client. The API's thread pool and a worker's batches share one client;
#: botocore's default of 10 would make busy threads queue for a connection.
MAX_POOL_CONNECTIONS = 32
#: The check at start: one attempt with short timeouts, so `sdapi serve` fails fast.
PROBE_CONNECT_TIMEOUT_S = 2.0
PROBE_READ_TIMEOUT_S = 5.0
#: Names are random and an image never changes once written (the API sends the same header), so
#: a CDN in front of the bucket may keep it forever.
CACHE_CONTROL = "public, max-age=31536000, immutable"

# AWS bucket naming rules (3-63 characters, lower case, digits, dots, hyphens; letters or digits
# at both ends, no "..", not an IP address). S3-compatible servers accept them too, and they need
# no escaping in URLs.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Prefix segments end up in public links, so only characters that need no escaping are allowed.
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")
# "AWSHTTPConnection(host='h', port=1): " (urllib3 2) or "<...Connection object at 0x..>: " (1).
_CONNECTION_REPR = re.compile(r"^(<[^>]*>|\w+\([^)]*\)): ")


@dataclass(frozen=True)
class S3Location:
    """A bucket and an optional key prefix (no leading or trailing slash)."""

    bucket: str
    prefix: str = ""

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name


def parse_s3_url(url: str) -> S3Location:
    """`s3://bucket[/prefix]` as a location; ConfigurationError (one line) if malformed."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or parts.query or parts.fragment or not parts.netloc:
        raise ConfigurationError(f"invalid S3 storage URL {url!r} (want s3://bucket[/prefix])")
    if "@" in parts.netloc:  # never echo what may be a secret
        raise ConfigurationError(
            "S3 storage URLs carry no credentials: set s3_access_key_id and s3_secret_access_key"
        )
    _check_bucket_name(parts.netloc)
    prefix = parts.path.strip("/")
    for segment in prefix.split("/") if prefix else ():
        if segment in (".", "..") or not _SEGMENT.fullmatch(segment):
            raise ConfigurationError(
                f"invalid S3 key prefix {prefix!r} in {url!r}: use non-empty segments of "
                "letters, digits, '.', '_' and '-' separated by '/'"
            )
    return S3Location(parts.netloc, prefix)


def _check_bucket_name(bucket: str) -> None:
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or _is_ip_address(bucket):
        raise ConfigurationError(
            f"invalid S3 bucket name {bucket!r}: 3-63 characters, lower-case letters, digits, "
            "'.' and '-', starting and ending with a letter or a digit"
        )


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _http_url(value: str, what: str) -> str:
    """An http(s) base URL without its trailing slash; ConfigurationError if it is not one."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(f"invalid {what} {value!r} (want http(s)://host[:port][/path])")
    return value.rstrip("/")


class S3Store:
    """The ImageStore port on an S3 bucket. Safe to share between threads (one boto3 client)."""

    def __init__(self, client: Any, location: S3Location, *, public_url: str = "") -> None:
        # `client` is a boto3 S3 client: thread-safe, unlike the session that made it.
        self._client = client
        self.location = location
        #: Base URL of the bucket as clients see it (CDN, website); empty: the API serves images.
        self.public_url = public_url.rstrip("/")

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        return cls.from_url(
            settings.storage_url,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            public_url=settings.s3_public_url,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint_url: str = "",
        region: str = "",
        access_key_id: str = "",
        secret_access_key: str = "",
        public_url: str = "",
    ) -> S3Store:
        """Validate the configuration, check that the bucket answers, and open the store."""
        location = parse_s3_url(url)
        endpoint = _http_url(endpoint_url, "S3 endpoint URL") if endpoint_url else None
        public = _http_url(public_url, "S3 public URL") if public_url else ""
        session = _session(region, access_key_id, secret_access_key)
        probe = _client(session, endpoint, _probe_config(custom_endpoint=endpoint is not None))
        _check_bucket(probe, location.bucket)
        client = _client(session, endpoint, _runtime_config(custom_endpoint=endpoint is not None))
        return cls(client, location, public_url=public)

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.location.bucket!r}, prefix={self.location.prefix!r})"

    def _key(self, name: str) -> str:
        if not is_valid_name(name):
            raise StorageError(detail=f"invalid image name {name!r}")
        return self.location.key(name)

    def put(self, name: str, data: bytes) -> None:
        key = self._key(name)
        try:
            # A PUT replaces the object whole: readers see the old image or the new one, never a
            # torn write. No ACL is set: buckets with ACLs disabled would refuse one; public
            # reads are the bucket policy's or the CDN's business.
            self._client.put_object(
                Bucket=self.location.bucket,
                Key=key,
                Body=data,
                ContentType=content_type(name),
                CacheControl=CACHE_CONTROL,
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(detail=f"cannot write {name}: {_reason(exc)}") from exc

    def get(self, name: str) -> bytes | None:
        if not is_valid_name(name):
            return None
        try:
            answer = self._client.get_object(Bucket=self.location.bucket, Key=self._key(name))
            body = answer["Body"]
            try:
                # StreamingBody checks the length it read against Content-Length.
                data: bytes = body.read()
                return data
            finally:
                body.close()
        except ClientError as exc:
            if _is_missing_key(exc):
                return None
            raise StorageError(detail=f"cannot read {name}: {_reason(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(detail=f"cannot read {name}: {_reason(exc)}") from exc

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            # S3 answers 204 whether or not the key existed: idempotent by nature.
            self._client.delete_object(Bucket=self.location.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(detail=f"cannot delete {name}: {_reason(exc)}") from exc

    def url(self, name: str, base_url: str) -> str:
        if self.public_url:
            return f"{self.public_url}/{self.location.key(name)}"
        # No public URL: the API serves the image from this store at /generations/<file>.
        return f"{base_url.rstrip('/')}/{name}"


def _session(region: str, access_key_id: str, secret_access_key: str) -> boto3.session.Session:
    if bool(access_key_id) != bool(secret_access_key):
        raise ConfigurationError(
            f"S3 credentials are incomplete: set both {CREDENTIAL_SETTINGS}, or neither"
        )
    try:
        # A private session, never boto3's global default one: sessions are not thread-safe.
        return boto3.session.Session(
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            region_name=region or None,
        )
    except BotoCoreError as exc:  # e.g. AWS_PROFILE names a profile that does not exist
        raise ConfigurationError(f"cannot set up the S3 client: {_one_line(exc)}") from exc


def _client(session: boto3.session.Session, endpoint: str | None, config: Config) -> Any:
    try:
        return session.client("s3", endpoint_url=endpoint, config=config)
    except (BotoCoreError, ValueError) as exc:
        raise ConfigurationError(f"cannot set up the S3 client: {_one_line(exc)}") from exc


def _runtime_config(*, custom_endpoint: bool) -> Config:
    return _config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        attempts=MAX_ATTEMPTS,
        custom_endpoint=custom_endpoint,
    )


def _probe_config(*, custom_endpoint: bool) -> Config:
    return _config(
        connect_timeout=PROBE_CONNECT_TIMEOUT_S,
        read_timeout=PROBE_READ_TIMEOUT_S,
        attempts=1,
        custom_endpoint=custom_endpoint,
    )


def _config(
    *, connect_timeout: float, read_timeout: float, attempts: int, custom_endpoint: bool
) -> Config:
    options: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "retries": {"mode": "standard", "total_max_attempts": attempts},
        "max_pool_connections": MAX_POOL_CONNECTIONS,
    }
    if custom_endpoint:
        # S3-compatible servers (MinIO, Ceph, moto, ...) rarely have wildcard DNS for
        # virtual-hosted buckets; path style works on all of them.
        options["s3"] = {"addressing_style": "path"}
        # botocore >= 1.36 adds CRC checksums with aws-chunked uploads by default, which several
        # S3-compatible servers reject. Payloads are still covered by the SigV4 signature.
        if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
            options["request_checksum_calculation"] = "when_required"
    return Config(**options)


def _check_bucket(client: Any, bucket: str) -> None:
    """ConfigurationError (one line) unless the bucket exists and these credentials reach it."""
    where = client.meta.endpoint_url
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        raise ConfigurationError(_bucket_problem(exc, bucket, where)) from exc
    except BotoCoreError as exc:
        raise ConfigurationError(_endpoint_problem(exc, bucket, where)) from exc


def _bucket_problem(exc: ClientError, bucket: str, where: str) -> str:
    # HEAD answers carry no body, so the HTTP status is all there is to go on.
    status = _status(exc)
    if status == 404:
        return f"S3 bucket {bucket!r} does not exist at {where} (create it or fix --storage)"
    if status == 403:
        return (
            f"S3 access to bucket {bucket!r} at {where} was denied (HTTP 403): check the access "
            "key, the secret key and the bucket policy"
        )
    # AWS names the bucket's real region when the client signed for another one.
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    region = headers.get("x-amz-bucket-region")
    hint = f"; the bucket is in region {region!r}, set s3_region" if region else ""
    return f"S3 bucket {bucket!r} at {where} cannot be used: HTTP {status} {_code(exc)}{hint}"


def _endpoint_problem(exc: BotoCoreError, bucket: str, where: str) -> str:
    if isinstance(exc, ConnectTimeoutError):
        seconds = PROBE_CONNECT_TIMEOUT_S
        return f"S3 endpoint {where} cannot be reached: no connection within {seconds:g} s"
    if isinstance(exc, EndpointConnectionError):
        return f"S3 endpoint {where} cannot be reached: {_socket_reason(exc)}"
    if isinstance(exc, ReadTimeoutError):
        return f"S3 endpoint {where} did not answer within {PROBE_READ_TIMEOUT_S:g} s"
    if isinstance(exc, NoCredentialsError):
        return f"no S3 credentials found: set {CREDENTIAL_SETTINGS} or the usual AWS variables"
    return f"cannot open S3 bucket {bucket!r} at {where}: {_one_line(exc)}"


def _socket_reason(exc: EndpointConnectionError) -> str:
    # botocore keeps the socket error (e.g. "[Errno 111] Connection refused") inside a urllib3
    # error whose text starts with the connection object; keep only what an operator acts on.
    return _CONNECTION_REPR.sub("", _one_line(exc.kwargs.get("error") or exc))


def _reason(exc: BotoCoreError | ClientError) -> str:
    """Why a call failed, in a few words fit for an API client: no endpoint, no traceback."""
    if isinstance(exc, ClientError):
        message = exc.response.get("Error", {}).get("Message") or f"HTTP {_status(exc)}"
        return f"{_code(exc)}: {_one_line(message)}"
    if isinstance(exc, BotoConnectionError):
        return "the S3 endpoint cannot be reached"
    if isinstance(exc, ReadTimeoutError):
        return "the S3 endpoint did not answer in time"
    if isinstance(exc, HTTPClientError | IncompleteReadError):
        return "the connection to the S3 endpoint broke"
    if isinstance(exc, NoCredentialsError):
        return "no S3 credentials are configured"
    return f"S3 client error ({type(exc).__name__})"


def _is_missing_key(exc: ClientError) -> bool:
    # A missing bucket is also a 404, but that is a broken store, not a missing image.
    code = _code(exc)
    return code == "NoSuchKey" or (_status(exc) == 404 and code != "NoSuchBucket")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _one_line(value: object) -> str:
    return " ".join(str(value).split())
