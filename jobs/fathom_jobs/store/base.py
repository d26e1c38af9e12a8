"""`Store`: the interface every backend offers, and the manifest logic shared by all of them."""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, TypeVar

from .errors import IntegrityError, NotFoundError, StoreError
from .keys import clean_key, join_key
from .manifest import MANIFEST_NAME, MAX_JSON_DEPTH, FileEntry, Manifest, hash_file, load_json
from .transfer import FileProgress, ProgressCallback, ProgressTracker, TransferAborted, run_parallel

log = logging.getLogger("fathom_jobs.store")

PathLike = str | os.PathLike[str]
MiB = 1024 * 1024
StoreT = TypeVar("StoreT", bound="Store")


class Store(ABC):
    """A directory-like view of `uri`; every method takes keys relative to it ("a/b.bin").

    Backends implement the underscore primitives on clean keys; this class validates keys and
    owns the manifest protocol: files first, `_MANIFEST.json` last, so no manifest = no output.
    """

    #: how many files move at once in upload_dir/download_dir
    parallel_files: int = 4
    #: read_json / read_manifest read at most this much and this deep (bigger or deeper: StoreError)
    max_json_bytes: int = 64 * MiB
    max_manifest_bytes: int = 64 * MiB
    max_json_depth: int = MAX_JSON_DEPTH

    def limit(self: StoreT, *, json_bytes: int | None = None, manifest_bytes: int | None = None,
              depth: int | None = None) -> StoreT:
        """Tighter read bounds for this store and its children (the operator reads with small ones)."""
        if json_bytes is not None:
            self.max_json_bytes = json_bytes
        if manifest_bytes is not None:
            self.max_manifest_bytes = manifest_bytes
        if depth is not None:
            self.max_json_depth = depth
        return self

    def _inherit(self, child: StoreT) -> StoreT:
        """A child keeps its parent's read bounds (backends call this from child())."""
        for name in ("max_json_bytes", "max_manifest_bytes", "max_json_depth"):
            if name in self.__dict__:
                setattr(child, name, self.__dict__[name])
        return child

    @property
    @abstractmethod
    def uri(self) -> str:
        """The store's root, e.g. s3://bucket/prefix or file:///abs/path (no trailing slash)."""

    @abstractmethod
    def child(self, rel: str) -> Store:
        """The same backend rooted at `rel` below this store."""

    # -- backend primitives (keys are clean and relative to this store) -----------------------

    @abstractmethod
    def _read(self, key: str) -> bytes: ...

    def _read_limited(self, key: str, max_bytes: int) -> bytes:
        """At most max_bytes of one object, else StoreError. Backends override this so the bound
        holds in memory too; this fallback reads the whole object first."""
        data = self._read(key)
        if len(data) > max_bytes:
            raise too_large(self.uri_of(key), len(data), max_bytes)
        return data

    @abstractmethod
    def _write(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _size(self, key: str) -> int:
        """Size in bytes of one object; NotFoundError when it is missing."""

    @abstractmethod
    def _list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def _delete(self, key: str) -> None:
        """Remove one object; a missing one is not an error."""

    @abstractmethod
    def _delete_prefix(self, prefix: str) -> None: ...

    @abstractmethod
    def _put_file(self, local: Path, key: str, progress: FileProgress) -> None: ...

    @abstractmethod
    def _get_file(self, key: str, local: Path, progress: FileProgress) -> None: ...

    # -- objects ------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def uri_of(self, rel: str = "") -> str:
        key = clean_key(rel)
        return f"{self.uri}/{key}" if key else self.uri

    def exists(self, rel: str) -> bool:
        return self._exists(clean_key(rel, allow_empty=False))

    def read_bytes(self, rel: str, *, max_bytes: int | None = None) -> bytes:
        key = clean_key(rel, allow_empty=False)
        return self._read(key) if max_bytes is None else self._read_limited(key, max_bytes)

    def write_bytes(self, rel: str, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write_bytes expects bytes, got {type(data).__name__}")
        self._write(clean_key(rel, allow_empty=False), bytes(data))

    def read_json(self, rel: str, *, max_bytes: int | None = None, max_depth: int | None = None) -> Any:
        """A JSON document, bounded in size and nesting (StoreError past either bound)."""
        data = self.read_bytes(rel, max_bytes=max_bytes or self.max_json_bytes)
        return load_json(data, source=self.uri_of(rel), max_depth=max_depth or self.max_json_depth)

    def write_json(self, rel: str, value: Any) -> None:
        try:
            text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cannot write {self.uri_of(rel)}: not plain JSON ({exc})") from None
        self.write_bytes(rel, text.encode())

    def list(self, rel: str = "") -> list[str]:
        """Every key under `rel` (a directory-like prefix), relative to this store, sorted."""
        return sorted(self._list(clean_key(rel)))

    def delete(self, rel: str) -> None:
        """Delete one object; a missing one is not an error."""
        self._delete(clean_key(rel, allow_empty=False))

    def delete_prefix(self, rel: str) -> None:
        """Delete every key under `rel`/ (whole path segments: "step-1" never hits "step-10")."""
        self._delete_prefix(clean_key(rel))

    def upload_file(self, local_path: PathLike, rel: str,
                    progress: ProgressCallback | None = None) -> None:
        local = _existing_file(local_path)
        key = clean_key(rel, allow_empty=False)
        tracker = ProgressTracker(local.stat().st_size, progress)
        run_parallel([key], lambda k, fp: self._put_file(local, k, fp), tracker, max_workers=1)

    def download_file(self, rel: str, local_path: PathLike,
                      progress: ProgressCallback | None = None) -> None:
        key = clean_key(rel, allow_empty=False)
        local = Path(local_path)
        local.parent.mkdir(parents=True, exist_ok=True)
        tracker = ProgressTracker(self._size(key), progress)
        run_parallel([key], lambda k, fp: self._get_file(k, local, fp), tracker, max_workers=1)

    # -- directories with manifests -----------------------------------------------------------

    def read_manifest(self, rel: str = "", *, max_bytes: int | None = None) -> Manifest | None:
        """The committed manifest under `rel`, or None when the output is absent or unfinished.
        A manifest over max_bytes (default max_manifest_bytes) or malformed is a StoreError."""
        key = join_key(clean_key(rel), MANIFEST_NAME)
        try:
            data = self._read_limited(key, max_bytes or self.max_manifest_bytes)
        except NotFoundError:
            return None
        return Manifest.from_json(data, source=self.uri_of(key))

    def upload_dir(
        self,
        local_dir: PathLike,
        rel: str = "",
        *,
        fingerprint: str | None = None,
        extra: dict[str, Any] | None = None,
        progress: ProgressCallback | None = None,
    ) -> Manifest:
        """Upload every file under local_dir to `rel`/, then commit `_MANIFEST.json` last.

        An interrupted upload leaves no manifest, so readers see no output; running it again
        re-uploads everything and commits. Objects under `rel` that are not in local_dir are
        left alone (they are simply not part of the output).
        """
        root = Path(local_dir)
        if not root.is_dir():
            raise NotFoundError(f"cannot upload {root}: expected an existing local directory")
        prefix = clean_key(rel)
        paths = _local_files(root)
        manifest_key = join_key(prefix, MANIFEST_NAME)
        # Withdraw any previous commit first: while files are being replaced, readers must see
        # "no output" rather than an old manifest over a mix of old and new files.
        self._delete(manifest_key)
        entries: dict[str, FileEntry] = {}

        def put(path: str, file_progress: FileProgress) -> None:
            local = root / path
            entries[path] = hash_file(local)
            self._put_file(local, join_key(prefix, path), file_progress)

        total = sum((root / path).stat().st_size for path in paths)
        run_parallel(paths, put, ProgressTracker(total, progress), max_workers=self.parallel_files)
        manifest = Manifest(files=dict(sorted(entries.items())), fingerprint=fingerprint,
                            extra=dict(extra or {}))
        self._write(manifest_key, manifest.to_json().encode())
        return manifest

    def download_dir(self, rel: str, local_dir: PathLike,
                     progress: ProgressCallback | None = None) -> Manifest:
        """Download a committed output and verify every file's size and sha256.

        A file that does not match is downloaded once more (a transfer can be corrupted); if it
        still does not match, IntegrityError names it and the bad local copy is removed. A stored
        object whose size differs from the manifest's is not downloaded at all, and a download
        that runs past the size the manifest claims is stopped there: a lying store costs at most
        the claimed bytes (plus one chunk), once.
        """
        prefix = clean_key(rel)
        manifest = self.read_manifest(prefix)
        if manifest is None:
            raise NotFoundError(
                f"{self.uri_of(prefix)} has no {MANIFEST_NAME}: the output is absent or its "
                "upload did not finish"
            )
        root = Path(local_dir)
        root.mkdir(parents=True, exist_ok=True)

        def get(path: str, file_progress: FileProgress) -> None:
            key = join_key(prefix, path)
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            expected = manifest.files[path]
            stored = self._size(key)
            if stored != expected.size:
                raise IntegrityError(f"{self.uri_of(key)} is {stored} bytes, but {MANIFEST_NAME} says "
                                     f"{expected.size}: not downloaded")
            file_progress.limit = expected.size
            for attempt in (1, 2):
                file_progress.restart()
                try:
                    self._get_file(key, target, file_progress)
                except TransferAborted:
                    if not file_progress.overflowed:
                        raise
                    target.unlink(missing_ok=True)
                    raise IntegrityError(f"{self.uri_of(key)} ran past the {expected.size} bytes {MANIFEST_NAME} "
                                         "claims: download stopped") from None
                actual = hash_file(target)
                if actual == expected:
                    return
                log.warning("%s does not match its manifest (attempt %d)",
                            self.uri_of(key), attempt)
            target.unlink(missing_ok=True)
            raise IntegrityError(
                f"{self.uri_of(key)} does not match {MANIFEST_NAME} after downloading it twice: "
                f"expected {expected.size} bytes with sha256 {expected.sha256}, "
                f"got {actual.size} bytes with sha256 {actual.sha256}"
            )

        tracker = ProgressTracker(manifest.total_bytes, progress)
        run_parallel(sorted(manifest.files), get, tracker, max_workers=self.parallel_files)
        return manifest


def too_large(uri: str, size: int | None, limit: int) -> StoreError:
    shown = f"{size} bytes" if size is not None else f"over {limit} bytes"
    return StoreError(f"{uri} is {shown}; reads of it are limited to {limit} bytes: refused")


def _existing_file(local_path: PathLike) -> Path:
    local = Path(local_path)
    if not local.is_file():
        raise NotFoundError(f"cannot upload {local}: expected an existing local file")
    return local


def _local_files(root: Path) -> list[str]:
    """Relative POSIX paths of the files under root (symlinked files followed), sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel == MANIFEST_NAME:
                continue  # a copy of an old commit record; the upload writes its own
            found.append(rel)
    return sorted(found)
