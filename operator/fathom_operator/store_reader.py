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
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from .observe import parse_time


class Manifest(Protocol):
    fingerprint: str | None
    created: str
    files: dict[str, Any]


class Store(Protocol):
    """The part of `fathom_jobs.store.Store` the operator uses."""

    def child(self, rel: str) -> Store: ...
    def read_manifest(self, rel: str = "") -> Manifest | None: ...
    def read_json(self, rel: str) -> Any: ...
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

    def __init__(self, opener: Opener | None = None) -> None:
        self._opener = opener
        self._stores: dict[tuple[Any, ...], Store] = {}
        self._lock = threading.Lock()

    def _open(self, uri: str, storage: dict[str, Any]) -> Store:
        if self._opener is None:
            from fathom_jobs.store import open_store  # boto3 only when a store is first read

            self._opener = open_store
        if not uri.startswith("s3://"):
            return self._opener(uri)  # file:// stores are cheap to open
        bucket, _, rel = uri[len("s3://"):].partition("/")
        key = (bucket, storage.get("endpoint"), storage.get("region"), storage.get("pathStyle"))
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                store = self._opener(f"s3://{bucket}", endpoint=storage.get("endpoint"),
                                     region=storage.get("region"), path_style=storage.get("pathStyle"))
                self._stores[key] = store
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

        manifest = self._open(output, storage).read_manifest()
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
            if shards:
                fractions = [float(d.get("fraction") or 0.0) for d in shards]
                etas = [d["eta_seconds"] for d in shards if d.get("eta_seconds") is not None]
                document = {"fraction": sum(fractions) / max(len(fractions), 1),
                            "eta_seconds": max(etas) if etas else None,
                            "step": sum(int(d.get("step") or 0) for d in shards),
                            "total": sum(int(d.get("total") or 0) for d in shards)}
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
        manifest = store.read_manifest(f"checkpoints/step-{step}")
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


def _json_or_none(store: Store, rel: str) -> Any:
    from fathom_jobs.store import NotFoundError

    try:
        return store.read_json(rel)
    except NotFoundError:
        return None


def stage_progress(document: dict[str, Any] | None, started: datetime | None, at: datetime) -> dict[str, Any] | None:
    """progress.json -> StageProgress fields; the ETA is estimated from elapsed time if the job gave none."""
    if not isinstance(document, dict):
        return None
    fraction = document.get("fraction")
    step, total = document.get("step"), document.get("total")
    if fraction is None and isinstance(step, int) and isinstance(total, int) and total > 0:
        fraction = step / total
    try:
        fraction = None if fraction is None else min(1.0, max(0.0, float(fraction)))
    except (TypeError, ValueError):
        fraction = None
    eta = document.get("eta_seconds", document.get("etaSeconds"))
    if eta is None and fraction and started is not None and fraction < 1:
        eta = (at - started).total_seconds() * (1 - fraction) / fraction
    progress = {
        "fraction": None if fraction is None else round(fraction, 4),
        "step": step if isinstance(step, int) else None,
        "total": total if isinstance(total, int) else None,
        "etaSeconds": None if eta is None else round(float(eta)),
        "message": document.get("message") if isinstance(document.get("message"), str) else None,
    }
    return {k: v for k, v in progress.items() if v is not None} or None
