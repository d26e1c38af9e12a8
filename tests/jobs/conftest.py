"""Fixtures shared by the job tests that talk to the local S3 server."""

from __future__ import annotations

import os

import pytest

from tests.support.s3server import SeaweedServer


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_server: SeaweedServer) -> None:
    """Credentials as a Job gets them (env from the Secret), and nothing else to fall back on."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "FATHOM_S3")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    # Never let botocore look for credentials anywhere but the env (no metadata service).
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
