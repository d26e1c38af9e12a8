"""Backend-neutral transfer plumbing: progress, bounded parallelism, retries with backoff."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TypeVar

ProgressCallback = Callable[[int, int], None]
T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("fathom_jobs.store")

# Outer retries wrap a whole request or file transfer, on top of botocore's own per-request
# retries, so an outage longer than botocore's window (a restarting server) still recovers.
OUTER_ATTEMPTS = 6
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
_REPORT_EVERY_S = 0.1


class TransferAborted(Exception):
    """Raised in a worker because another part of the same transfer failed or was interrupted."""


class FileProgress:
    """Bytes moved for one file, so a retried file can take back what it had counted."""

    def __init__(self, tracker: ProgressTracker) -> None:
        self._tracker = tracker
        self._done = 0
        #: set when the whole transfer is being abandoned; workers stop at the next chance
        self.abort = tracker.abort
        #: bytes this file may have (a manifest's claim); moving more aborts the transfer
        self.limit: int | None = None
        self.overflowed = False

    @property
    def aborted(self) -> bool:
        return self.abort.is_set()

    def add(self, n: int) -> None:
        # Called from transfer threads; never raises, so a transfer library cannot mistake a
        # progress problem for a network error and retry it.
        with self._tracker.lock:
            self._done += n
            self._tracker.done += n
            if self.limit is not None and self._done > self.limit:
                self.overflowed = True
                self.abort.set()

    def restart(self) -> None:
        with self._tracker.lock:
            self._tracker.done -= self._done
            self._done = 0


class ProgressTracker:
    """Aggregates bytes over parallel files; the user's callback runs on the calling thread only."""

    def __init__(self, total: int, callback: ProgressCallback | None) -> None:
        self.total = total
        self.done = 0
        self.lock = threading.Lock()
        self.abort = threading.Event()
        self._callback = callback
        self._last: int | None = None

    def file(self) -> FileProgress:
        return FileProgress(self)

    def report(self) -> None:
        if self._callback is None:
            return
        with self.lock:
            done = self.done
        if done != self._last:
            self._last = done
            self._callback(done, self.total)


def run_parallel(
    items: Sequence[T],
    worker: Callable[[T, FileProgress], None],
    tracker: ProgressTracker,
    *,
    max_workers: int,
) -> None:
    """Run `worker` over items with at most `max_workers` at once, reporting progress.

    The first failure (or an exception from the progress callback, or Ctrl-C) sets the abort
    flag, cancels what has not started, waits for running workers to stop, and is re-raised.
    """
    tracker.report()
    if not items:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(items)))) as pool:
        futures: list[Future[None]] = [pool.submit(worker, item, tracker.file()) for item in items]
        try:
            pending: set[Future[None]] = set(futures)
            while pending:
                done, pending = wait(pending, timeout=_REPORT_EVERY_S, return_when=FIRST_EXCEPTION)
                tracker.report()
                for future in done:
                    error = future.exception()
                    if error is not None:
                        raise error
        except BaseException as failure:
            tracker.abort.set()
            for future in futures:
                future.cancel()
            wait(futures)
            # Report the failure that caused the abort, not a worker that merely stopped because of it.
            if isinstance(failure, TransferAborted):
                for future in futures:
                    if future.done() and not future.cancelled():
                        error = future.exception()
                        if error is not None and not isinstance(error, TransferAborted):
                            raise error from None
            raise
    tracker.report()


def backoff_delays(attempts: int = OUTER_ATTEMPTS) -> Iterator[float]:
    """Exponential backoff with jitter: attempts - 1 delays."""
    for attempt in range(attempts - 1):
        yield min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt) * random.uniform(0.5, 1.0)


def call_with_retries(
    fn: Callable[[], R],
    *,
    what: str,
    is_retryable: Callable[[BaseException], bool],
    describe: Callable[[BaseException], str],
    abort: threading.Event | None = None,
    attempts: int = OUTER_ATTEMPTS,
) -> R:
    """Call fn, retrying transient failures with backoff; other errors propagate at once."""
    delays = backoff_delays(attempts)
    while True:
        try:
            return fn()
        except Exception as exc:
            if abort is not None and abort.is_set():
                raise TransferAborted(what) from None
            if not is_retryable(exc):
                raise
            delay = next(delays, None)
            if delay is None:
                raise
            log.warning("%s: %s; retrying in %.1fs", what, describe(exc), delay)
            if abort is not None:
                if abort.wait(delay):
                    raise TransferAborted(what) from None
            else:
                time.sleep(delay)
