"""file:// backend: a directory on a local or shared filesystem (local runs and tests).

Nothing outside the root is ever read, written, listed or deleted: keys cannot hold `..`
(`clean_key`), and a path that a symbolic link inside the store resolves to somewhere outside the
root is refused (AccessDeniedError) - or, when listing, left out.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

from .base import Store, too_large
from .errors import AccessDeniedError, NotFoundError, StoreError
from .keys import clean_key
from .transfer import FileProgress, TransferAborted

# Files being written carry this in their name until the final rename; list() hides them, so
# a half-written file is never mistaken for a stored object.
TMP_MARK = ".fathom-tmp-"
_COPY_CHUNK = 8 * 1024 * 1024


class FileStore(Store):
    def __init__(self, root: Path, jail: Path | None = None) -> None:
        """`jail`: the directory nothing may resolve outside of (default: root; children keep their
        parent's, so a linked child directory does not become a way out)."""
        if not root.is_absolute():
            raise ValueError(f"file store root must be an absolute path, got {str(root)!r}")
        self._root = Path(os.path.normpath(root))
        self._jail = self._root if jail is None else jail

    @classmethod
    def from_uri(cls, uri: str) -> FileStore:
        parsed = urlparse(uri)
        path = unquote(parsed.path)
        if parsed.netloc not in ("", "localhost") or not path.startswith("/"):
            raise ValueError(
                f"invalid file URI {uri!r}: expected file:///absolute/path (three slashes)"
            )
        return cls(Path(path))

    @property
    def uri(self) -> str:
        return "file://" + self._root.as_posix()

    @property
    def root(self) -> Path:
        return self._root

    def child(self, rel: str) -> FileStore:
        return self._inherit(FileStore(self._root / clean_key(rel), self._jail))

    def _inside(self, path: Path) -> bool:
        root = os.path.realpath(self._jail)
        real = os.path.realpath(path)
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def _path(self, key: str) -> Path:
        path = self._root / key if key else self._root
        if not self._inside(path):
            raise AccessDeniedError(f"{self.uri_of(key)} resolves outside the store (a symbolic link): refused")
        return path

    def _read(self, key: str) -> bytes:
        with _os_errors(self.uri_of(key)):
            path = self._path(key)
            if not path.is_file():
                raise NotFoundError(f"{self.uri_of(key)} does not exist")
            return path.read_bytes()

    def _read_limited(self, key: str, max_bytes: int) -> bytes:
        with _os_errors(self.uri_of(key)):
            path = self._path(key)
            if not path.is_file():
                raise NotFoundError(f"{self.uri_of(key)} does not exist")
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > max_bytes:
                    raise too_large(self.uri_of(key), size, max_bytes)
                data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise too_large(self.uri_of(key), None, max_bytes)
            return data

    def _write(self, key: str, data: bytes) -> None:
        with _os_errors(self.uri_of(key)), _atomic_target(self._path(key)) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())  # small commit records must survive a node crash

    def _exists(self, key: str) -> bool:
        path = self._root / key
        return path.is_file() and self._inside(path)

    def _size(self, key: str) -> int:
        path = self._path(key)
        with _os_errors(self.uri_of(key)):
            if not path.is_file():
                raise NotFoundError(f"{self.uri_of(key)} does not exist")
            return path.stat().st_size

    def _list(self, prefix: str) -> list[str]:
        base = self._root / prefix if prefix else self._root
        if not base.is_dir() or not self._inside(base):
            return []
        keys: list[str] = []
        with _os_errors(self.uri_of(prefix)):
            for dirpath, _dirnames, filenames in os.walk(base):  # never descends into linked directories
                for name in filenames:
                    path = Path(dirpath) / name
                    if TMP_MARK not in name and (not path.is_symlink() or self._inside(path)):
                        keys.append(path.relative_to(self._root).as_posix())
        return keys

    def _delete(self, key: str) -> None:
        with _os_errors(self.uri_of(key)):
            self._path(key).unlink(missing_ok=True)

    def _delete_prefix(self, prefix: str) -> None:
        base = self._path(prefix)
        with _os_errors(self.uri_of(prefix)):
            if not base.is_dir():
                return
            if prefix:
                shutil.rmtree(base)
                return
            for entry in base.iterdir():  # the root itself stays: it is the store
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()

    def _put_file(self, local: Path, key: str, progress: FileProgress) -> None:
        with _os_errors(self.uri_of(key)):
            _copy(local, self._path(key), progress)

    def _get_file(self, key: str, local: Path, progress: FileProgress) -> None:
        source = self._path(key)
        with _os_errors(self.uri_of(key)):
            if not source.is_file():
                raise NotFoundError(f"{self.uri_of(key)} does not exist")
            _copy(source, local, progress)


@contextmanager
def _atomic_target(final: Path) -> Iterator[Path]:
    """Yield a temp path beside `final`; rename it into place only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _copy(source: Path, target: Path, progress: FileProgress) -> None:
    progress.restart()
    with _atomic_target(target) as tmp, open(source, "rb") as src, open(tmp, "wb") as dst:
        buffer = bytearray(_COPY_CHUNK)
        view = memoryview(buffer)
        while n := src.readinto(buffer):
            if progress.aborted:
                raise TransferAborted(str(target))
            dst.write(view[:n])
            progress.add(n)


@contextmanager
def _os_errors(uri: str) -> Iterator[None]:
    """Turn filesystem errors into store errors that say which object and why."""
    try:
        yield
    except StoreError:
        raise
    except FileNotFoundError as exc:
        raise NotFoundError(f"{exc.filename or uri} does not exist") from None
    except PermissionError as exc:
        raise AccessDeniedError(
            f"access denied to {exc.filename or uri} (check the directory's permissions)"
        ) from None
    except IsADirectoryError:
        raise StoreError(f"{uri} is a directory, expected a file") from None
    except OSError as exc:
        raise StoreError(f"{uri}: {exc.strerror or exc}") from None
