"""A real S3-compatible HTTP server on loopback (moto's server mode) for the storage tests.

The stores under test talk to it over HTTP through boto3 exactly as they would talk to AWS or
MinIO; nothing in the client library is mocked. moto keeps its buckets in process-wide state, so
every test makes its own bucket (`create_bucket`) and never depends on another test's objects.
Credentials are explicit dummy values, so nothing from the user's ~/.aws is ever read.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import httpx
from moto.server import ThreadedMotoServer

from sdapi.settings import Settings

REGION = "us-east-1"
#: moto accepts any credentials unless authentication is enforced (see `enforced_auth`).
ACCESS_KEY_ID = "sdapi-test-key"
SECRET_ACCESS_KEY = "sdapi-test-secret"


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto on a free loopback port; yields its endpoint URL (`http://127.0.0.1:<port>`)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@functools.cache
def client(endpoint: str, service: str = "s3") -> Any:
    """A boto3 client on the test server, outside the code under test (to arrange and inspect).

    Cached: making a boto3 session costs a tenth of a second, far more than a request here.
    """
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )


def unique_bucket() -> str:
    return f"sdapi-test-{uuid.uuid4().hex[:20]}"


def create_bucket(endpoint: str) -> str:
    """A new, empty bucket with a name no other test uses."""
    name = unique_bucket()
    client(endpoint).create_bucket(Bucket=name)
    return name


def s3_settings(endpoint: str, storage: str, **changes: Any) -> Settings:
    """Settings for an S3 store on the test server (explicit credentials and region)."""
    values: dict[str, Any] = dict(
        storage=storage,
        s3_endpoint_url=endpoint,
        s3_region=REGION,
        s3_access_key_id=ACCESS_KEY_ID,
        s3_secret_access_key=SECRET_ACCESS_KEY,
    )
    values.update(changes)
    return Settings(**values)


def create_user(endpoint: str, name: str, *, s3_access: bool) -> tuple[str, str]:
    """An IAM user on the server with an access key; allowed every S3 action if `s3_access`."""
    iam = client(endpoint, "iam")
    iam.create_user(UserName=name)
    if s3_access:
        iam.put_user_policy(
            UserName=name,
            PolicyName="s3-all",
            PolicyDocument='{"Version": "2012-10-17", "Statement": '
            '[{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}',
        )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@contextmanager
def enforced_auth(endpoint: str) -> Iterator[None]:
    """Make the server check signatures and IAM permissions, as real S3 does, for a while.

    moto's server mode does this through its own HTTP control endpoint. The switch is
    process-wide, so it is always put back, whatever the test did.
    """
    previous = _set_auth(endpoint, "0")
    try:
        yield
    finally:
        _set_auth(endpoint, previous)


def _set_auth(endpoint: str, free_actions: str) -> str:
    # The number of requests let through before checks start: "0" enforces, "inf" disables.
    answer = httpx.post(
        f"{endpoint}/moto-api/reset-auth",
        content=free_actions.encode(),
        headers={"Content-Type": "text/plain"},
    )
    answer.raise_for_status()
    return str(answer.json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"])
