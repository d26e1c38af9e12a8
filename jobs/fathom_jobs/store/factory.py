"""`open_store`: a Store from a URI plus the S3 connection settings (arguments, then env)."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from .base import Store
from .keys import clean_key
from .local import FileStore

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig

ACCEPTED = "s3://bucket/prefix or file:///absolute/path"
DEFAULT_REGION = "us-east-1"
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


def redact_uri(uri: str) -> str:
    """The URI with any user:password@ part removed, safe to show in an error."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", uri)


def open_store(
    uri: str,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    path_style: bool | None = None,
    config: TransferConfig | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    max_attempts: int = 5,
    outer_attempts: int | None = None,
) -> Store:
    """Open `s3://bucket/prefix` or `file:///abs/path`.

    S3 settings left as None come from the environment: endpoint from FATHOM_S3_ENDPOINT or
    AWS_ENDPOINT_URL, region from AWS_REGION or AWS_DEFAULT_REGION (else us-east-1). Path-style
    addressing defaults to on with a custom endpoint (MinIO, Ceph, SeaweedFS) and off on AWS.
    Credentials come from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN), never from the URI. `connect_timeout`, `read_timeout`, `max_attempts`
    (botocore's) and `outer_attempts` (this store's own retries) bound how long a dead endpoint can
    hold a call; the operator opens its stores with small ones.
    """
    if not isinstance(uri, str):
        raise TypeError(f"store URI must be a str, got {type(uri).__name__}")
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme == "file":
        return FileStore.from_uri(uri)
    if scheme == "s3":
        return _open_s3(uri, endpoint=endpoint, region=region, path_style=path_style,
                        config=config, timeouts=(connect_timeout, read_timeout), max_attempts=max_attempts,
                        outer_attempts=outer_attempts)
    raise ValueError(f"unsupported store URI {redact_uri(uri)!r}: expected {ACCEPTED}")


def _open_s3(uri: str, *, endpoint: str | None, region: str | None, path_style: bool | None,
             config: TransferConfig | None, timeouts: tuple[float, float] = (10.0, 60.0),
             max_attempts: int = 5, outer_attempts: int | None = None) -> Store:
    parsed = urlparse(uri)
    shown = redact_uri(uri)
    if "@" in parsed.netloc:
        raise ValueError(
            f"invalid store URI {shown!r}: credentials do not belong in the URI; "
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the credentials secret)"
        )
    if parsed.query or parsed.fragment or not _BUCKET.match(parsed.netloc):
        raise ValueError(f"invalid store URI {shown!r}: expected s3://bucket/prefix")
    try:
        prefix = clean_key(parsed.path)
    except ValueError as exc:
        raise ValueError(f"invalid store URI {shown!r}: {exc}") from None

    endpoint = (endpoint or os.environ.get("FATHOM_S3_ENDPOINT")
                or os.environ.get("AWS_ENDPOINT_URL") or None)
    if endpoint is not None:
        _check_endpoint(endpoint)
    region = (region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
              or DEFAULT_REGION)
    if path_style is None:
        path_style = endpoint is not None

    import boto3
    from botocore.config import Config

    from .s3 import S3Connection, S3Store, default_transfer_config
    from .transfer import OUTER_ATTEMPTS

    transfer_config = config or default_transfer_config()
    concurrency = int(getattr(transfer_config, "max_request_concurrency", 10))
    client_config = Config(
        region_name=region,
        signature_version="s3v4",
        # botocore's own retries: throttling (SlowDown/503), 5xx, resets and timeouts.
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=timeouts[0],
        read_timeout=timeouts[1],
        # One pooled connection per concurrent part request, plus headroom for small calls.
        max_pool_connections=concurrency + 8,
        s3={
            "addressing_style": "path" if path_style else "virtual",
            # botocore sha256-signs every body sent over plain http (in-cluster MinIO/SeaweedFS):
            # a second full hash pass on the client and one more on the server. Integrity is
            # covered without it: CRC32 checksums on each request and the manifest's sha256
            # verified end to end on download. (Over https AWS already skips it.)
            "payload_signing_enabled": False,
        },
    )
    client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=client_config)
    label = endpoint or f"AWS S3 ({region})"
    connection = S3Connection(client, transfer_config, label, attempts=outer_attempts or OUTER_ATTEMPTS)
    return S3Store(parsed.netloc, prefix, connection)


def _check_endpoint(endpoint: str) -> None:
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(
            f"invalid S3 endpoint {redact_uri(endpoint)!r}: expected http(s)://host[:port]"
        )
    if "@" in parsed.netloc:
        raise ValueError(
            f"invalid S3 endpoint {redact_uri(endpoint)!r}: credentials do not belong in the "
            "endpoint URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
