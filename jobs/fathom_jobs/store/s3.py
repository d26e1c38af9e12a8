"""s3:// backend on boto3 (AWS, MinIO, Ceph, SeaweedFS). boto3 is imported only here, lazily."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .base import Store, too_large
from .errors import AccessDeniedError, NotFoundError, StoreError
from .keys import clean_key, join_key
from .transfer import OUTER_ATTEMPTS, FileProgress, TransferAborted, call_with_retries

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig

R = TypeVar("R")
MB = 1024 * 1024

_DENIED_CODES = {
    "403", "AccessDenied", "Forbidden", "SignatureDoesNotMatch", "InvalidAccessKeyId",
    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
}
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "RequestTimeout", "InternalError", "ServiceUnavailable",
    # A multipart upload the server forgot (e.g. restarted): starting the file over fixes it.
    "NoSuchUpload",
}
_DELETE_BATCH = 1000  # the S3 DeleteObjects limit


def default_transfer_config() -> TransferConfig:
    """Multipart settings; bench/bench_store.py measured them (bench/RESULTS.md).

    Chunk size and concurrency barely moved throughput against a local server (hashing
    dominates); 64 MB parts cost the least CPU per MB and allow objects up to 640 GB within
    S3's 10,000-part limit. Pass your own TransferConfig to open_store to raise concurrency
    for a remote endpoint with more bandwidth.
    """
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=64 * MB,
        multipart_chunksize=64 * MB,
        max_concurrency=8,
        use_threads=True,
        preferred_transfer_client="classic",
    )


class S3Connection:
    """One client and transfer manager, shared by a store and all its children."""

    def __init__(self, client: Any, config: TransferConfig, endpoint_label: str,
                 attempts: int = OUTER_ATTEMPTS) -> None:
        self.client = client
        self.config = config
        self.endpoint_label = endpoint_label
        self.attempts = attempts  # outer retries of each request (botocore retries inside each)
        self._manager: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the client (it holds the credentials)
        return f"S3Connection({self.endpoint_label!r})"

    @property
    def manager(self) -> Any:
        with self._lock:
            if self._manager is None:
                from boto3.s3.transfer import create_transfer_manager

                self._manager = create_transfer_manager(self.client, self.config)
            return self._manager


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str, connection: S3Connection) -> None:
        self._bucket = bucket
        self._prefix = clean_key(prefix)
        self._conn = connection
        # Each file keeps its parts in flight on the shared transfer manager; more files than
        # its request threads would only queue, fewer would idle it on many small files.
        self.parallel_files = max(4, int(getattr(connection.config, "max_request_concurrency", 8)))

    @property
    def uri(self) -> str:
        return f"s3://{join_key(self._bucket, self._prefix)}"

    @property
    def bucket(self) -> str:
        return self._bucket

    def child(self, rel: str) -> S3Store:
        return self._inherit(S3Store(self._bucket, join_key(self._prefix, clean_key(rel)), self._conn))

    def _full(self, key: str) -> str:
        return join_key(self._prefix, key)

    def _call(self, what: str, key: str, fn: Callable[[], R],
              abort: threading.Event | None = None) -> R:
        """Run one S3 operation with outer retries; turn boto errors into StoreErrors."""
        uri = self.uri_of(key)
        try:
            return call_with_retries(fn, what=f"{what} {uri}", is_retryable=is_retryable,
                                     describe=describe, abort=abort, attempts=self._conn.attempts)
        except TransferAborted:
            raise
        except Exception as exc:
            error = translate(exc, uri=uri, bucket=self._bucket, what=what,
                              endpoint=self._conn.endpoint_label)
            if error is None:
                raise
            raise error from None  # the botocore chain adds noise, never anything needed

    def _read(self, key: str) -> bytes:
        client = self._conn.client

        def get() -> bytes:
            # Read the body inside the retry: a connection reset mid-body is retried too.
            body: bytes = client.get_object(Bucket=self._bucket, Key=self._full(key))["Body"].read()
            return body

        return self._call("reading", key, get)

    def _read_limited(self, key: str, max_bytes: int) -> bytes:
        client = self._conn.client
        uri = self.uri_of(key)

        def get() -> bytes:
            response = client.get_object(Bucket=self._bucket, Key=self._full(key))
            body = response["Body"]
            try:
                size = response.get("ContentLength")
                if isinstance(size, int) and size > max_bytes:
                    raise too_large(uri, size, max_bytes)  # not read at all
                data: bytes = body.read(max_bytes + 1)  # whatever the server claims, never more
            finally:
                body.close()
            if len(data) > max_bytes:
                raise too_large(uri, None, max_bytes)
            return data

        return self._call("reading", key, get)

    def _write(self, key: str, data: bytes) -> None:
        client = self._conn.client
        self._call("writing", key,
                   lambda: client.put_object(Bucket=self._bucket, Key=self._full(key), Body=data))

    def _head(self, key: str) -> dict[str, Any] | None:
        client = self._conn.client

        def head() -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = client.head_object(Bucket=self._bucket, Key=self._full(key))
                return found
            except Exception as exc:
                if _error_code(exc) in _MISSING_CODES:
                    return None
                raise

        return self._call("checking", key, head)

    def _exists(self, key: str) -> bool:
        return self._head(key) is not None

    def _size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise NotFoundError(f"{self.uri_of(key)} does not exist")
        return int(head["ContentLength"])

    def _list_full(self, prefix: str) -> list[str]:
        full = self._full(prefix)
        client = self._conn.client

        def list_all() -> list[str]:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=f"{full}/" if full else "")
            return [item["Key"] for page in pages for item in page.get("Contents", [])]

        return self._call("listing", prefix, list_all)

    def _list(self, prefix: str) -> list[str]:
        strip = len(self._prefix) + 1 if self._prefix else 0
        return [key[strip:] for key in self._list_full(prefix)]

    def _delete(self, key: str) -> None:
        client = self._conn.client
        self._call("deleting", key,
                   lambda: client.delete_object(Bucket=self._bucket, Key=self._full(key)))

    def _delete_prefix(self, prefix: str) -> None:
        keys = self._list_full(prefix)
        client = self._conn.client
        for start in range(0, len(keys), _DELETE_BATCH):
            delete = {"Objects": [{"Key": k} for k in keys[start:start + _DELETE_BATCH]],
                      "Quiet": True}
            response: dict[str, Any] = self._call(
                "deleting", prefix,
                lambda: client.delete_objects(Bucket=self._bucket, Delete=delete))  # noqa: B023
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(
                    f"deleting {self.uri_of(prefix)}: {len(errors)} objects not deleted, first "
                    f"s3://{self._bucket}/{first.get('Key')}: {first.get('Code')}"
                )

    def _put_file(self, local: Path, key: str, progress: FileProgress) -> None:
        self._transfer("uploading", key, progress, lambda manager, subscribers: manager.upload(
            str(local), self._bucket, self._full(key), subscribers=subscribers))

    def _get_file(self, key: str, local: Path, progress: FileProgress) -> None:
        self._transfer("downloading", key, progress, lambda manager, subscribers: manager.download(
            self._bucket, self._full(key), str(local), subscribers=subscribers))

    def _transfer(self, what: str, key: str, progress: FileProgress,
                  submit: Callable[[Any, list[Any]], Any]) -> None:
        from boto3.s3.transfer import ProgressCallbackInvoker
        from s3transfer.exceptions import CancelledError

        def attempt() -> None:
            progress.restart()
            future = submit(self._conn.manager, [ProgressCallbackInvoker(progress.add)])
            while not future.done():
                # Cancelling through s3transfer stops further parts and aborts the multipart
                # upload; raising from a progress callback would look like a network error.
                if progress.abort.wait(0.05):
                    future.cancel()
                    break
            try:
                future.result()
            except CancelledError:
                raise TransferAborted(self.uri_of(key)) from None

        self._call(what, key, attempt, abort=progress.abort)


# -- error classification (botocore imported lazily) ----------------------------------------


def _root_error(exc: BaseException) -> BaseException:
    """Unwrap boto3/s3transfer wrappers (RetriesExceeded, S3UploadFailed) to the real error."""
    seen = 0
    while seen < 10:
        seen += 1
        inner = getattr(exc, "last_exception", None)
        if inner is None and type(exc).__name__ in ("S3UploadFailedError", "S3DownloadFailedError"):
            inner = exc.__cause__ or exc.__context__
        if inner is None:
            return exc
        exc = inner
    return exc


def _error_code(exc: BaseException) -> str | None:
    response = getattr(_root_error(exc), "response", None)
    if not isinstance(response, dict):
        return None
    return str(response.get("Error", {}).get("Code") or "") or None


def _http_status(exc: BaseException) -> int:
    response = getattr(_root_error(exc), "response", None)
    if not isinstance(response, dict):
        return 0
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx, connection resets and timeouts: worth trying again."""
    from botocore import exceptions as bx

    error = _root_error(exc)
    if isinstance(error, (bx.ConnectionError, bx.HTTPClientError, bx.IncompleteReadError,
                          ConnectionError, TimeoutError)):
        return True
    if isinstance(error, bx.ClientError):
        status = _http_status(error)
        return _error_code(error) in _TRANSIENT_CODES or status >= 500 or status == 429
    try:
        from urllib3 import exceptions as u3
    except ImportError:  # pragma: no cover - urllib3 ships with botocore
        return False
    return isinstance(error, (u3.ProtocolError, u3.TimeoutError))


def describe(exc: BaseException) -> str:
    """A short, credential-free description: the error class and the S3 error code."""
    error = _root_error(exc)
    code = _error_code(error)
    text = f"{type(error).__name__}" + (f" ({code})" if code else f": {error}")
    return text[:300]


def translate(exc: BaseException, *, uri: str, bucket: str, what: str,
              endpoint: str) -> StoreError | None:
    """The StoreError a user should see for a boto error, or None for non-boto errors."""
    from botocore import exceptions as bx

    error = _root_error(exc)
    if isinstance(error, (bx.NoCredentialsError, bx.PartialCredentialsError,
                          bx.CredentialRetrievalError)):
        return AccessDeniedError(
            f"no usable S3 credentials for {uri}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (from the credentials secret)"
        )
    code = _error_code(error)
    if code in _DENIED_CODES:
        return AccessDeniedError(f"access denied to {uri} ({code}; check the credentials secret)")
    if code == "NoSuchBucket":
        # Not a NotFoundError: a missing bucket is a configuration mistake, and must not read
        # as "this output is absent" (which would make the operator re-run the stage).
        return StoreError(
            f"bucket {bucket!r} does not exist at {endpoint} ({uri}): create it or fix the "
            "storage URI"
        )
    if code in _MISSING_CODES:
        return NotFoundError(f"{uri} does not exist")
    if is_retryable(error):
        return StoreError(
            f"{what} {uri} failed: S3 at {endpoint} kept failing after retries ({describe(error)})"
        )
    if isinstance(error, bx.ClientError):
        message = error.response.get("Error", {}).get("Message", "")
        return StoreError(f"{what} {uri} failed: {code}: {message}"[:500])
    if isinstance(error, bx.BotoCoreError):
        return StoreError(f"{what} {uri} failed: {describe(error)}")
    return None
