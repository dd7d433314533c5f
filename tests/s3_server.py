"""Fixtures: a real S3 protocol server (moto, subprocess, HTTP on 127.0.0.1, free port).

Import into a test module with ``pytest_plugins = ["s3_server"]`` (tests/ is on sys.path).
The server is stopped by PID in the fixture finalizer (atft_core.registry.locals3).
"""

from __future__ import annotations

import uuid

import pytest

from atft_core.registry.locals3 import local_s3_server

FAKE_CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint():
    """Endpoint URL of a session-wide local S3 server (serialized conditional writes)."""
    pytest.importorskip("moto")
    with local_s3_server(serialize=True) as url:
        yield url


@pytest.fixture
def s3_env(monkeypatch):
    for k, v in FAKE_CREDS.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AIRFLOW_CONN_AWS_DEFAULT",
              "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def s3_bucket(s3_endpoint, s3_env):
    """A fresh, empty bucket on the local server; yields its name."""
    name = f"atft-{uuid.uuid4().hex[:12]}"
    _admin_client(s3_endpoint).create_bucket(Bucket=name)
    return name


_CLIENTS: dict[str, object] = {}


def _admin_client(endpoint: str):
    # creating a boto3 client costs ~0.5 s (service model load): one per endpoint
    import boto3

    if endpoint not in _CLIENTS:
        _CLIENTS[endpoint] = boto3.client("s3", endpoint_url=endpoint,
                                          region_name=FAKE_CREDS["AWS_DEFAULT_REGION"],
                                          aws_access_key_id="testing",
                                          aws_secret_access_key="testing")
    return _CLIENTS[endpoint]
