"""`_MANIFEST.json`: the commit record of an output, and the input fingerprint used to memoize."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import StoreError
from .keys import clean_key

if TYPE_CHECKING:
    pass

MANIFEST_NAME = "_MANIFEST.json"
MANIFEST_VERSION = 1
_HASH_CHUNK = 8 * 1024 * 1024
MAX_JSON_DEPTH = 64  # manifests are 4 levels deep; `extra` may nest a little
MAX_FILE_SIZE = 5 * 1024**4  # 5 TiB: S3's largest object
_HEX = frozenset("0123456789abcdefABCDEF")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(data: str | bytes, *, source: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Strict JSON (no NaN/Infinity) nested at most max_depth levels; a StoreError naming `source`
    otherwise, whatever the bytes (no RecursionError, no memory beyond the parsed value)."""
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{source} is not valid JSON: {exc}") from None
    except RecursionError:
        raise StoreError(f"{source} is nested too deeply (over {max_depth} levels)") from None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > max_depth:
                raise StoreError(f"{source} is nested too deeply (over {max_depth} levels)")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return value


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass
class Manifest:
    """What a complete output holds: every file's size and sha256, plus its input fingerprint."""

    files: dict[str, FileEntry] = field(default_factory=dict)
    fingerprint: str | None = None
    created: str = field(default_factory=lambda: utc_now_iso())
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "files": {
                path: {"size": entry.size, "sha256": entry.sha256}
                for path, entry in sorted(self.files.items())
            },
            "fingerprint": self.fingerprint,
            "created": self.created,
            "extra": self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, doc: Any, *, source: str = "manifest") -> Manifest:
        """Parse and validate; a malformed manifest is a StoreError naming `source`."""

        def bad(why: str) -> StoreError:
            return StoreError(f"{source} is not a valid manifest: {why}")

        if not isinstance(doc, dict):
            raise bad(f"expected a JSON object, got {type(doc).__name__}")
        version = doc.get("version", MANIFEST_VERSION)
        if version != MANIFEST_VERSION or isinstance(version, bool):
            raise bad(f"unsupported version {str(version)[:20]!r}; expected {MANIFEST_VERSION}")
        files_doc = doc.get("files")
        if not isinstance(files_doc, dict):
            raise bad("'files' must be an object of {path: {size, sha256}}")
        files: dict[str, FileEntry] = {}
        for path, entry in files_doc.items():
            try:
                # A manifest decides where downloads are written: refuse paths escaping the target.
                clean_path = clean_key(path, allow_empty=False)
            except ValueError as exc:
                raise bad(str(exc)) from None
            if not isinstance(entry, dict):
                raise bad(f"files[{path!r}] must be an object with size and sha256")
            size, digest = entry.get("size"), entry.get("sha256")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise bad(f"files[{path!r}].size must be a non-negative integer")
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in _HEX for c in digest):
                raise bad(f"files[{path!r}].sha256 must be a 64-character hex digest")
            if size > MAX_FILE_SIZE:
                raise bad(f"files[{path!r}].size {size} is beyond any object a store holds")
            files[clean_path] = FileEntry(size=size, sha256=digest.lower())
        fingerprint = doc.get("fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise bad("'fingerprint' must be a string or null")
        created = doc.get("created")
        if not isinstance(created, str):
            raise bad("'created' must be an ISO 8601 string")
        extra = doc.get("extra") or {}
        if not isinstance(extra, dict):
            raise bad("'extra' must be an object")
        return cls(files=files, fingerprint=fingerprint, created=created, extra=extra)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "manifest") -> Manifest:
        """Parse a manifest; malformed, non-JSON or too deeply nested input is a StoreError."""
        return cls.from_dict(load_json(text, source=source), source=source)


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def hash_file(path: str | os.PathLike[str]) -> FileEntry:
    """Size and sha256 from one read of the file (so both describe the same bytes)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        # Large reads let hashlib release the GIL, so files hash in parallel threads.
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(size=size, sha256=digest.hexdigest())


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no whitespace; NaN and non-JSON types refused."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"fingerprint inputs must be plain JSON values: {exc}") from None


def _input_identity(item: Manifest | dict[str, Any] | None) -> Any:
    # An input is identified by its content (paths, sizes, hashes), not by when it was written,
    # so an upstream stage that re-ran and produced identical bytes keeps downstream memoized.
    if item is None:
        return None
    if isinstance(item, Manifest):
        manifest = item
    elif isinstance(item, dict) and "files" in item:
        manifest = Manifest.from_dict(item, source="input manifest")
    elif isinstance(item, dict):
        return item  # e.g. {"uri": "hf://org/model@rev"}: a reference with no manifest
    else:
        raise TypeError(
            f"input_manifests items must be Manifest, dict or None, got {type(item).__name__}"
        )
    return {path: [entry.size, entry.sha256] for path, entry in sorted(manifest.files.items())}


def fingerprint(
    stage_type: str,
    params: dict[str, Any],
    image: str,
    input_manifests: list[Manifest | dict[str, Any] | None],
) -> str:
    """sha256 over a canonical JSON of everything that determines a stage's output."""
    if not isinstance(stage_type, str) or not stage_type:
        raise ValueError("stage_type must be a non-empty string")
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict, got {type(params).__name__}")
    if not isinstance(image, str):
        raise TypeError(f"image must be a str, got {type(image).__name__}")
    document = {
        "stage_type": stage_type,
        "params": params,
        "image": image,
        "inputs": [_input_identity(item) for item in input_manifests],
    }
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()

