"""Fetch a model or dataset reference into a local directory.

References are `s3://bucket/prefix`, `file:///abs/path`, `file://./rel/path` (relative to the
working directory: the local runner's `file://./runs`) or `hf://org/name[@revision]`. Store
references with a `_MANIFEST.json` are downloaded through the store, which checks every file's
size and sha256; a plain local directory without a manifest (a model built by `make demo`) is used
where it is. Downloads are cached under $FATHOM_CACHE_DIR, else /scratch/fathom-cache, else a
temporary directory, and reused while the manifest is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from .errors import StageInputError
from .specs import StorageOptions
from .store import NotFoundError, Store, StoreError, open_store

CACHE_ENV = "FATHOM_CACHE_DIR"


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    candidates = [Path(configured)] if configured else [Path("/scratch/fathom-cache"),
                                                        Path(tempfile.gettempdir()) / "fathom-cache"]
    for candidate in candidates:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise StageInputError(f"no writable cache directory (tried {', '.join(map(str, candidates))})")


def resolve_file_uri(uri: str) -> str:
    """`file://./x` and `file://x` (relative) become `file:///<cwd>/x`; other URIs are unchanged."""
    if not uri.startswith("file://") or uri.startswith("file:///"):
        return uri
    rest = uri[len("file://"):]
    if rest.startswith("localhost/"):
        return "file:///" + rest[len("localhost/"):]
    return "file://" + str((Path.cwd() / rest).resolve())


def local_path(uri: str) -> Path | None:
    """The filesystem path of a file:// URI (relative ones resolved), None for other schemes."""
    uri = resolve_file_uri(uri)
    return Path(uri[len("file://"):]) if uri.startswith("file://") else None


def store_for(uri: str, storage: StorageOptions | None = None) -> Store:
    storage = storage or StorageOptions()
    try:
        return open_store(resolve_file_uri(uri), endpoint=storage.endpoint, region=storage.region,
                          path_style=storage.path_style)
    except ValueError as exc:
        raise StageInputError(str(exc)) from None


def parse_hf(uri: str) -> tuple[str, str | None]:
    """`hf://org/name@rev` -> ("org/name", "rev")."""
    ref = uri[len("hf://"):]
    repo_id, _, revision = ref.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise StageInputError(f"invalid hub reference {uri!r}: expected hf://org/name[@revision]")
    return repo_id, revision or None


def fetch(uri: str, *, kind: Literal["model", "dataset"] = "model", storage: StorageOptions | None = None,
          cache_dir: Path | None = None) -> Path:
    """A local directory (or file) holding the referenced model or dataset."""
    if uri.startswith("hf://"):
        return _fetch_hub(uri, kind)
    path = local_path(uri)  # None unless file://
    if path is not None:
        if not path.exists():
            raise StageInputError(f"{uri}: {path} does not exist")
        if path.is_file() or not (path / "_MANIFEST.json").exists():
            return path  # a plain file or a directory that no stage wrote: nothing to verify
    elif not uri.startswith("s3://"):
        raise StageInputError(f"unsupported reference {uri!r}: expected s3://, file:// or hf://")
    return _fetch_store(uri, storage, cache_dir or cache_root())


def _fetch_store(uri: str, storage: StorageOptions | None, cache: Path) -> Path:
    store = store_for(uri, storage)
    try:
        manifest = store.read_manifest()
        if manifest is None:
            return _fetch_single_object(uri, storage, cache)
        key = hashlib.sha256(store.uri.encode()).hexdigest()[:20]
        target = cache / "store" / key
        marker = cache / "store" / f"{key}.manifest"
        stamp = hashlib.sha256(manifest.to_json().encode()).hexdigest()
        if target.is_dir() and marker.exists() and marker.read_text() == stamp:
            return target
        shutil.rmtree(target, ignore_errors=True)
        store.download_dir("", target)
        marker.write_text(stamp)
        return target
    except StoreError as exc:
        raise StageInputError(f"cannot fetch {uri}: {exc}") from None


def _fetch_single_object(uri: str, storage: StorageOptions | None, cache: Path) -> Path:
    # s3://bucket/corpus.jsonl: one object, not a stage output (no manifest to check against).
    parent_uri, _, name = uri.rstrip("/").rpartition("/")
    parent = store_for(parent_uri, storage)
    if not name or not parent.exists(name):
        raise StageInputError(f"{uri} has no _MANIFEST.json: the output is absent or its stage did not finish")
    target = cache / "objects" / hashlib.sha256(uri.encode()).hexdigest()[:20] / name
    try:
        parent.download_file(name, target)
    except NotFoundError:
        raise StageInputError(f"{uri} does not exist") from None
    return target


def _fetch_hub(uri: str, kind: str) -> Path:
    repo_id, revision = parse_hf(uri)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        # HF_HOME (the Job sets /scratch/hf) decides where the hub cache lives.
        return Path(snapshot_download(repo_id, revision=revision, repo_type=kind, token=os.environ.get("HF_TOKEN")))
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise StageInputError(f"{uri}: {type(exc).__name__} (private repos need HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise StageInputError(f"{uri}: the hub cannot be reached and the model is not cached") from None
    except HfHubHTTPError as exc:
        raise StageInputError(f"{uri}: the hub refused the download: {str(exc).splitlines()[0]}") from None
