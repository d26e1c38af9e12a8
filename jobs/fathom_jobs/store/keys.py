"""Relative keys inside a store: validated once so no backend can escape its root."""

from __future__ import annotations


def clean_key(rel: str, *, allow_empty: bool = True) -> str:
    """Normalise a relative key ("a/b/", "/" stripped at the ends) and reject escapes.

    Keys are POSIX-style paths relative to a store's URI; "." and ".." segments are refused so a
    manifest or a caller cannot address anything outside the store.
    """
    if not isinstance(rel, str):
        raise TypeError(f"store key must be a str, got {type(rel).__name__}")
    key = rel.strip("/")
    if not key:
        if allow_empty:
            return ""
        raise ValueError("store key must not be empty")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ValueError(
                f"invalid store key {rel!r}: expected a relative path like 'dir/file.bin' "
                "without empty, '.' or '..' segments"
            )
        if "\\" in part or "\x00" in part:
            raise ValueError(f"invalid store key {rel!r}: backslashes and NUL are not allowed")
    return key


def join_key(*parts: str) -> str:
    """Join already-clean keys, skipping empty ones."""
    return "/".join(p for p in parts if p)
