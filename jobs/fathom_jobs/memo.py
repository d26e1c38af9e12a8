"""The memo contract: when a stage's output already holds exactly what its Job would produce.

A stage's fingerprint is sha256 over its type, its resolved parameters, its image and the identity
of each of its inputs (the URIs its registry row lists, in that order). An input is identified by
its manifest(s) when a stage wrote it, by its content hash when it is a shipped set, else by its
reference. A stage's output is complete for those inputs when its `_MANIFEST.json` carries that
fingerprint.

Both sides use this module: the Job before it does any work, the operator to mark a stage Cached
without running it. It needs no pyarrow, so the operator image can import it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .inputs import local_path, store_for
from .registry import stage_type
from .specs import SHIPPED_DATASETS, JobSpec
from .store import Manifest, Store, StoreError, fingerprint

SHARDS_DIR = "shards"  # sharded stages write shards/<i>-of-<n>/, each with its own manifest
SHARD_NAME = re.compile(r"^(\d+)-of-(\d+)$")
log = logging.getLogger("fathom_jobs.memo")
IMAGE_ENV = "FATHOM_IMAGE"  # set by render: the image is part of what decides an output

Identity = Manifest | dict[str, Any]


def stage_inputs(stage_type_name: str, params: dict[str, Any]) -> list[str]:
    """The input URIs a stage's fingerprint covers, in order (`params` with references resolved)."""
    return stage_type(stage_type_name).inputs(params)


def shipped_path(name: str) -> Path | None:
    """The file of a problem set shipped in this package (aime25, ...), None for anything else."""
    if name not in SHIPPED_DATASETS:
        return None
    return Path(__file__).parent / "data" / f"{name.replace('-', '_')}.jsonl"


def shard_names(store: Store) -> list[str]:
    """`<i>-of-<n>` names of the shards written under `store`'s shards/ prefix."""
    names = {key.split("/")[1] for key in store.list(SHARDS_DIR) if key.count("/") >= 2}
    return sorted(n for n in names if SHARD_NAME.match(n))


def input_identity(uri: str, open_store: Callable[[str], Store]) -> Identity:
    """What a fingerprint records about one input; `open_store(uri)` opens a store:// or file:// prefix."""

    shipped = shipped_path(uri)
    if shipped is not None:
        return {"shipped": uri, "sha256": hashlib.sha256(shipped.read_bytes()).hexdigest()}
    if uri.startswith("hf://"):
        return {"uri": uri}
    path = local_path(uri)
    if path is not None and path.is_file():
        return {"uri": uri, "size": path.stat().st_size, "mtime": int(path.stat().st_mtime)}
    try:
        store = open_store(uri)
        manifest = store.read_manifest()
        if manifest is not None:
            return manifest
        names = shard_names(store)
        if not names:
            return {"uri": uri}  # a directory no stage wrote (e.g. the demo's model): its URI is all we know
        shards = {name: store.read_manifest(f"{SHARDS_DIR}/{name}") for name in names}
        return {"uri": uri, "shards": {n: m.to_dict()["files"] for n, m in shards.items() if m is not None}}
    except StoreError:
        return {"uri": uri}


def output_params(stage_type_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters that decide a stage's output: its model's RUNTIME_FIELDS left out."""
    model = stage_type(stage_type_name).params
    runtime = {model.model_fields[name].alias or name for name in model.RUNTIME_FIELDS}
    return {key: value for key, value in params.items() if key not in runtime}


def stage_fingerprint(stage_type_name: str, params: dict[str, Any], image: str,
                      identities: list[Identity]) -> str:
    return fingerprint(stage_type_name, output_params(stage_type_name, params), image, list(identities))


def job_identities(job: JobSpec) -> list[Identity]:
    """The identities of a Job's inputs, read from the store its spec names."""

    # The typed dump fills defaults a hand-written spec may leave out, as the operator's resolved params do.
    params = job.typed_params().model_dump(by_alias=True, mode="json")
    return [input_identity(uri, lambda u: store_for(u, job.storage)) for uri in stage_inputs(job.type, params)]


def job_fingerprint(job: JobSpec, identities: list[Identity] | None = None) -> str:
    """The fingerprint the operator expects on this Job's output (image from $FATHOM_IMAGE)."""
    found = job_identities(job) if identities is None else identities
    return stage_fingerprint(job.type, job.params, os.environ.get(IMAGE_ENV, ""), found)


def job_output(job: JobSpec) -> tuple[Store, str, bool]:
    """The Job's output store, the fingerprint its manifest must carry, and whether it already does
    (then the Job has nothing to do)."""
    store = store_for(job.output, job.storage)
    fingerprint = job_fingerprint(job)
    done = is_complete(store, fingerprint)
    if done:
        log.info("%s is complete for these inputs; nothing to do", store.uri)
    return store, fingerprint, done


def is_complete(store: Store, stage_fingerprint_: str) -> bool:
    """True when the store holds a complete output made from exactly these inputs."""
    manifest = store.read_manifest()
    return manifest is not None and manifest.fingerprint == stage_fingerprint_

