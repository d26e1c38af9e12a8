"""file:// backend: a directory on a local or shared filesystem (local runs and tests)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

from .base import Store
from .errors import AccessDeniedError, NotFoundError, StoreError
from .keys import clean_key
from .transfer import FileProgress, TransferAborted

# Files being written carry this in their name until the final rename; list() hides them, so
# a half-written file is never mistaken for a stored object.
TMP_MARK = ".fathom-tmp-"
_COPY_CHUNK = 8 * 1024 * 1024


class FileStore(Store):
    def __init__(self, root: Path) -> None:
        if not root.is_absolute():
            raise ValueError(f"file store root must be an absolute path, got {str(root)!r}")
        self._root = Path(os.path.normpath(root))

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
        return FileStore(self._root / clean_key(rel))

    def _path(self, key: str) -> Path:
        return self._root / key if key else self._root

    def _read(self, key: str) -> bytes:
        with _os_errors(self.uri_of(key)):
            path = self._path(key)
            if not path.is_file():
                raise NotFoundError(f"{self.uri_of(key)} does not exist")
            return path.read_bytes()

    def _write(self, key: str, data: bytes) -> None:
        with _os_errors(self.uri_of(key)), _atomic_target(self._path(key)) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())  # small commit records must survive a node crash

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _size(self, key: str) -> int:
        path = self._path(key)
        with _os_errors(self.uri_of(key)):
            if not path.is_file():
                raise NotFoundError(f"{self.uri_of(key)} does not exist")
            return path.stat().st_size

    def _list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        keys: list[str] = []
        with _os_errors(self.uri_of(prefix)):
            for dirpath, _dirnames, filenames in os.walk(base):
                for name in filenames:
                    if TMP_MARK not in name:
                        keys.append((Path(dirpath) / name).relative_to(self._root).as_posix())
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
