"""Each pod's log in the store: `<output>/_logs/attempt-<attempt>/pod-<index>.log`.

`python -m fathom_jobs` tees its own stdout and stderr (file descriptors 1 and 2, so whatever its
children print lands there too: torchrun and its workers) into a local file, and at exit, whatever
the exit (0, 2 on bad input once the spec names an output, 1, 143 on SIGTERM), uploads it to
`log_uri(JobSpec.output, JobSpec.attempt, pod index)`, secrets redacted as on the job's stderr
(`fathom_jobs.redact`). The pod index is JOB_COMPLETION_INDEX (indexed Jobs: sharded and
multi-node stages), else NODE_RANK, else 0. On a multi-node stage every node's launcher uploads
its own; torchrun's workers upload nothing (their output is in their launcher's).

Best effort: an upload that fails or runs past UPLOAD_TIMEOUT_S is said on stderr and never
changes the exit code. The logs sit beside a stage's output and are never part of it: no manifest
lists them, nothing that reads an output lists `_logs/`, and no stage deletes its prefix at start,
so a retry keeps the earlier attempts' logs. `read_log` is the reading side (`fathom logs`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .redact import redact
from .store import Store
from .store.errors import NotFoundError

LOGS_DIR = "_logs"
UPLOAD_TIMEOUT_S = 60.0  # a dead store must not eat the pod's grace period
MAX_LOG_BYTES = 64 * 1024 * 1024  # stored: the first HEAD_BYTES and the rest's tail
HEAD_BYTES = 4 * 1024 * 1024


def log_key(attempt: int, index: int) -> str:
    """The log's key relative to the stage's output prefix."""
    return f"{LOGS_DIR}/attempt-{attempt}/pod-{index}.log"


def log_uri(output: str, attempt: int, index: int) -> str:
    return f"{output.rstrip('/')}/{log_key(attempt, index)}"


def pod_index(env: Mapping[str, str] = os.environ) -> int:
    """This pod's index: JOB_COMPLETION_INDEX, else NODE_RANK, else 0."""
    for name in ("JOB_COMPLETION_INDEX", "NODE_RANK"):
        value = env.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def read_log(open_store: Callable[[str], Store], output: str, attempt: int, index: int) -> str | None:
    """One pod's log of one attempt (`open_store(uri)` opens the output's prefix), or None when the
    pod uploaded none (still running, killed, or its store was unreachable)."""
    try:
        return open_store(output.rstrip("/")).read_bytes(log_key(attempt, index)).decode("utf-8", "replace")
    except NotFoundError:
        return None


def is_torchrun_worker(env: Mapping[str, str] = os.environ) -> bool:
    """A process torchrun started: its output already goes through the launcher's log."""
    return "TORCHELASTIC_RUN_ID" in env


# --------------------------------------------------------------------------------------- teeing
class Tee:
    """Copies everything written to file descriptors 1 and 2 (this process and its children) into
    `path` while still passing it on to where they pointed before."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 (closed by stop())
        self._lock = threading.Lock()
        self._saved: dict[int, int] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> Tee:
        _flush_python_streams()
        for fd in (1, 2):
            read_end, write_end = os.pipe()
            self._saved[fd] = os.dup(fd)
            os.dup2(write_end, fd)
            os.close(write_end)
            thread = threading.Thread(target=self._pump, args=(read_end, self._saved[fd]),
                                      name=f"fathom-tee-{fd}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _pump(self, read_end: int, target: int) -> None:
        try:
            while chunk := os.read(read_end, 65536):
                _write_all(target, chunk)
                with self._lock:
                    self._file.write(chunk)
        except (OSError, ValueError):
            pass  # the pod's log stream went away, or stop() gave up waiting: keep nothing more
        finally:
            os.close(read_end)

    def stop(self, timeout: float = 5.0) -> None:
        """Point 1 and 2 back where they were and wait for the copy to drain (a child still holding
        the pipe open, an orphan, is not waited for past `timeout`)."""
        _flush_python_streams()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # drops this process's write end of the pipe: EOF once children are gone
        deadline = time.monotonic() + timeout
        for thread, saved in zip(self._threads, self._saved.values(), strict=True):
            thread.join(max(0.0, deadline - time.monotonic()))
            if not thread.is_alive():  # a pump still running keeps its fd: a reused number would get its bytes
                os.close(saved)
        self._saved.clear()
        with self._lock:
            self._file.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def start_tee() -> Tee | None:
    """Start teeing into a file under the cache, or None (nowhere to write it: no log, no failure)."""
    from .inputs import cache_root

    try:
        directory = cache_root() / "joblog"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{os.getpid()}.log"
        path.unlink(missing_ok=True)
        return Tee(path).start()
    except OSError as exc:
        print(f"fathom: not keeping a log for the store: {exc}", file=sys.stderr)
        return None


# -------------------------------------------------------------------------------------- upload
def stored_text(path: Path, max_bytes: int = MAX_LOG_BYTES) -> bytes:
    """The log as stored: redacted line by line; past max_bytes, its head and tail with a note."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size <= max_bytes:
            raw = handle.read()
        else:
            head = handle.read(min(HEAD_BYTES, max_bytes // 2))
            handle.seek(size - (max_bytes - len(head)))
            tail = handle.read()
            raw = head + f"\n[... {size - len(head) - len(tail)} bytes left out ...]\n".encode() + tail
    text = raw.decode("utf-8", "replace")
    return "".join(redact(line) for line in text.splitlines(keepends=True)).encode()


def open_log_store(output: str, endpoint: str | None, region: str | None, path_style: bool | None) -> Store:
    """The output's store with short timeouts and few retries (a dead endpoint costs seconds)."""
    from .inputs import resolve_file_uri
    from .store import open_store

    return open_store(resolve_file_uri(output.rstrip("/")), endpoint=endpoint, region=region,
                      path_style=path_style, connect_timeout=5.0, read_timeout=20.0, max_attempts=2,
                      outer_attempts=2)


def upload_log(path: Path, open_output: Callable[[], Store], attempt: int, index: int,
               timeout: float = UPLOAD_TIMEOUT_S) -> str | None:
    """Upload the log; None when done, else why not (the caller says it on stderr)."""
    outcome: list[str | None] = []

    def upload() -> None:
        try:
            open_output().write_bytes(log_key(attempt, index), stored_text(path))
            outcome.append(None)
        except Exception as exc:  # best effort: any failure is reported, never raised
            outcome.append(f"{type(exc).__name__}: {exc}")

    # A thread, so a store that hangs past its own timeouts cannot keep the pod past `timeout`.
    thread = threading.Thread(target=upload, name="fathom-log-upload", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"no answer from the store within {timeout:.0f} s"
    return outcome[0]
