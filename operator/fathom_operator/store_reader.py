"""What the operator reads from the artifact store, and nothing else (it never writes there).

`StoreReader.read(request)` answers the plan's questions (`plan.Read`):

- `memo`: does the stage's output already hold a complete result for exactly these inputs? The
  fingerprint is the one the stage's Job computes (`fathom_jobs.memo`: its type, resolved
  parameters, image and input identities), so a hit means the Job would do nothing.
- `progress`: the running job's `progress.json` (fraction, step/total, ETA).
- `metrics`: `metrics.json` of a succeeded stage (and `results.json` of an eval stage).
- `checkpoint`: the newest complete training checkpoint written by this run of the stage.

Store I/O is blocking (boto3), so the operator runs `read` in a worker thread. Any store error
becomes a `Fact` with `error` set: progress is informational, a failed memo check just means the
Job runs (and memoizes itself), and nothing here may stop a recipe.
`fathom_jobs.store` is imported on first use; tests may pass any `open_store`-like callable.

Bounds (the store is written by Jobs that run recipe code, so nothing read from it is trusted):
only endpoints the admin allows are ever opened (`allowed_endpoints`); JSON documents and
manifests are read up to JSON_LIMIT / MANIFEST_LIMIT bytes and JSON_DEPTH levels (bigger or deeper
is a StoreError, never memory growth); S3 clients get short timeouts and few retries; at most
MAX_STORES clients are kept (least recently used first out).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from .observe import parse_time

JSON_LIMIT = 2 * 1024 * 1024  # progress.json, metrics.json, results.json
MANIFEST_LIMIT = 8 * 1024 * 1024  # _MANIFEST.json (a few hundred bytes per file)
JSON_DEPTH = 32
MAX_STORES = 64
# S3 client bounds for the operator's reads: one request waits at most ~connect + read timeout,
# botocore tries twice and the store wrapper once, so a dead endpoint costs seconds, not minutes.
S3_OPTIONS: dict[str, Any] = {"connect_timeout": 5.0, "read_timeout": 15.0, "max_attempts": 2, "outer_attempts": 1}


class EndpointNotAllowed(Exception):
    """A read would reach an S3 endpoint the admin's policy does not allow."""


class Manifest(Protocol):
    fingerprint: str | None
    created: str
    files: dict[str, Any]


class Store(Protocol):
    """The part of `fathom_jobs.store.Store` the operator uses."""

    def child(self, rel: str) -> Store: ...
    def read_manifest(self, rel: str = "", *, max_bytes: int | None = None) -> Manifest | None: ...
    def read_json(self, rel: str, *, max_bytes: int | None = None, max_depth: int | None = None) -> Any: ...
    def list(self, rel: str = "") -> list[str]: ...


Opener = Callable[..., Store]  # open_store(uri, *, endpoint, region, path_style)


@dataclass(frozen=True)
class Read:
    """A question the plan needs answered before it can act; `key` says which variant."""

    kind: str  # memo | progress | metrics | checkpoint
    stage: str
    key: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Fact:
    key: str
    value: Any
    at: datetime
    error: str | None = None


class StoreReader:
    """Opens each store root once (a boto3 client is costly) and answers `Read`s."""

    def __init__(self, opener: Opener | None = None, allowed_endpoints: Collection[str] | None = None) -> None:
        """`allowed_endpoints`: normalized S3 endpoints the admin allows (None: no admin policy)."""
        self._opener = opener
        self._allowed = None if allowed_endpoints is None else frozenset(allowed_endpoints)
        self._stores: OrderedDict[tuple[Any, ...], Store] = OrderedDict()
        self._lock = threading.Lock()

    def _open(self, uri: str, storage: dict[str, Any]) -> Store:
        endpoint = storage.get("endpoint")
        if endpoint is not None and self._allowed is not None:
            from .policy import normalize_endpoint

            if not isinstance(endpoint, str) or normalize_endpoint(endpoint) not in self._allowed:
                raise EndpointNotAllowed(f"endpoint {endpoint!r} is not allowed by the operator's policy")
        if self._opener is None:
            from fathom_jobs.store import open_store  # boto3 only when a store is first read

            self._opener = open_store
        if not uri.startswith("s3://"):
            return _bounded(self._opener(uri))  # file:// stores are cheap to open
        bucket, _, rel = uri[len("s3://"):].partition("/")
        key = (bucket, endpoint, storage.get("region"), storage.get("pathStyle"))
        with self._lock:
            store = self._stores.get(key)
            if store is not None:
                self._stores.move_to_end(key)
        if store is None:
            store = _bounded(self._opener(f"s3://{bucket}", endpoint=endpoint, region=storage.get("region"),
                                          path_style=storage.get("pathStyle"), **S3_OPTIONS))
            with self._lock:
                self._stores[key] = store
                while len(self._stores) > MAX_STORES:
                    self._stores.popitem(last=False)
        return store.child(rel.strip("/")) if rel.strip("/") else store

    def read(self, request: Read, now: datetime) -> Fact:
        try:
            value = getattr(self, f"_{request.kind}")(**request.args)
        except Exception as exc:  # any store failure is reported, never raised
            return Fact(request.key, None, now, f"{type(exc).__name__}: {exc}")
        return Fact(request.key, value, now)

    # -- the questions ------------------------------------------------------------------------

    def _memo(self, stage_type: str, params: dict[str, Any], image: str, output: str,
              storage: dict[str, Any]) -> dict[str, Any]:
        from fathom_jobs.memo import stage_fingerprint, stage_inputs

        manifest = self._open(output, storage).read_manifest(max_bytes=MANIFEST_LIMIT)
        if manifest is None or not manifest.fingerprint:
            return {"hit": False}
        identities = [self.identity(uri, storage) for uri in stage_inputs(stage_type, params)]
        expected = stage_fingerprint(stage_type, params, image, identities)
        return {"hit": manifest.fingerprint == expected, "fingerprint": expected}

    def _progress(self, output: str, storage: dict[str, Any]) -> dict[str, Any] | None:
        from fathom_jobs.memo import SHARDS_DIR

        store = self._open(output, storage)
        document = _json_or_none(store, "progress.json")
        if document is None and self._sharded(store):
            # Sharded stages: each shard reports its share; the stage is as far as the mean shard.
            shards = [d for name in store.list(SHARDS_DIR) if name.endswith("/progress.json")
                      if (d := _json_or_none(store, name))]
            shards = [d for d in shards if isinstance(d, dict)]
            if shards:
                fractions = [_number(d.get("fraction")) or 0.0 for d in shards]
                etas = [e for d in shards if (e := _number(d.get("eta_seconds"))) is not None]
                document = {"fraction": sum(fractions) / max(len(fractions), 1),
                            "eta_seconds": max(etas) if etas else None,
                            "step": sum(int(_number(d.get("step")) or 0) for d in shards),
                            "total": sum(int(_number(d.get("total")) or 0) for d in shards)}
        return document if isinstance(document, dict) else None

    def _metrics(self, output: str, storage: dict[str, Any], results: bool = False) -> dict[str, Any]:
        store = self._open(output, storage)
        found = {"metrics": _json_or_none(store, "metrics.json")}
        if results:
            found["results"] = _json_or_none(store, "results.json")
        return found

    def _checkpoint(self, output: str, storage: dict[str, Any], not_before: str | None) -> str | None:
        """The newest complete checkpoint written by this run: older ones belong to an earlier spec."""
        from fathom_jobs.store import latest_checkpoint

        store = self._open(output, storage)
        found = latest_checkpoint(store)  # type: ignore[arg-type]
        if found is None:
            return None
        step, uri = found
        manifest = store.read_manifest(f"checkpoints/step-{step}", max_bytes=MANIFEST_LIMIT)
        created = parse_time(manifest.created) if manifest is not None else None
        floor = parse_time(not_before)
        if floor is not None and (created is None or created < floor):
            return None
        return uri

    def identity(self, uri: str, storage: dict[str, Any]) -> Any:
        """An input's identity as the Job computes it (fathom_jobs.memo), through this reader's stores."""
        from fathom_jobs.inputs import resolve_file_uri
        from fathom_jobs.memo import input_identity

        # The operator's Store protocol is the slice of fathom_jobs' Store that input_identity reads.
        def opener(target: str) -> Any:
            return self._open(resolve_file_uri(target), storage)

        try:
            return input_identity(uri, opener)
        except Exception:  # the job side treats an unreadable input the same way
            return {"uri": uri}

    def _sharded(self, store: Store) -> bool:
        from fathom_jobs.memo import shard_names

        return bool(shard_names(store))  # type: ignore[arg-type]


def _bounded(store: Store) -> Store:
    """The operator's read bounds on a store (and its children)."""
    limit = getattr(store, "limit", None)
    if callable(limit):
        limit(json_bytes=JSON_LIMIT, manifest_bytes=MANIFEST_LIMIT, depth=JSON_DEPTH)
    return store


def _json_or_none(store: Store, rel: str) -> Any:
    from fathom_jobs.store import NotFoundError

    try:
        return store.read_json(rel, max_bytes=JSON_LIMIT, max_depth=JSON_DEPTH)
    except NotFoundError:
        return None


def _number(value: Any) -> float | None:
    """A finite number from a job's JSON, else None (the job's documents are not trusted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def stage_progress(document: dict[str, Any] | None, started: datetime | None, at: datetime) -> dict[str, Any] | None:
    """progress.json -> StageProgress fields; the ETA is estimated from elapsed time if the job gave none."""
    if not isinstance(document, dict):
        return None
    int64 = 2**63 - 1
    step = document.get("step") if isinstance(document.get("step"), int) else None
    total = document.get("total") if isinstance(document.get("total"), int) else None
    step = step if step is not None and not isinstance(step, bool) and 0 <= step <= int64 else None
    total = total if total is not None and not isinstance(total, bool) and 0 <= total <= int64 else None
    fraction = _number(document.get("fraction"))
    if fraction is None and step is not None and total:
        fraction = step / total
    fraction = None if fraction is None else min(1.0, max(0.0, fraction))
    eta = _number(document.get("eta_seconds", document.get("etaSeconds")))
    if eta is None and fraction and started is not None and fraction < 1:
        eta = (at - started).total_seconds() * (1 - fraction) / fraction
    if eta is not None and not 0 <= eta <= 10 * 365 * 86400:
        eta = None
    message = document.get("message")
    progress = {
        "fraction": None if fraction is None else round(fraction, 4),
        "step": step,
        "total": total,
        "etaSeconds": None if eta is None else round(eta),
        "message": message[:300] if isinstance(message, str) else None,
    }
    return {k: v for k, v in progress.items() if v is not None} or None
