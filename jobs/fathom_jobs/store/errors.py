"""Errors the store raises. Messages name the URI and the likely fix, never a credential."""

from __future__ import annotations


class StoreError(Exception):
    """Anything that went wrong talking to the artifact store."""


class NotFoundError(StoreError):
    """The object, prefix or bucket does not exist."""


class AccessDeniedError(StoreError):
    """The store refused the credentials (wrong, missing or without permission)."""


class IntegrityError(StoreError):
    """A file's size or sha256 does not match its manifest, even after downloading it again."""
