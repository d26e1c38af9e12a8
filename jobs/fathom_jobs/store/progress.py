"""`progress.json` and `metrics.json`: what a running job tells the operator about itself."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .base import Store
from .errors import NotFoundError, StoreError
from .manifest import utc_now_iso

log = logging.getLogger("fathom_jobs.store")

PROGRESS_NAME = "progress.json"
METRICS_NAME = "metrics.json"
_RESERVED = ("step", "total", "fraction", "rate", "eta_seconds", "updated")


class ProgressWriter:
    """Writes progress.json at most every `min_interval_s`, and always the final state.

    A job calls update() as often as it likes (every step); only the throttled writes reach
    the store. The first update is written at once, the last one on close() or when
    step reaches total. A failed write is logged and retried with the next update: progress
    is informational and must never kill a training run.
    """

    def __init__(self, store: Store, min_interval_s: float = 5.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s!r}")
        self._store = store
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._start: tuple[float, int] | None = None  # (time, step) of the first update
        self._last_write: float | None = None
        self._pending: dict[str, Any] | None = None

    def update(self, step: int, total: int, **fields: Any) -> bool:
        """Record the job's position; returns True when this call wrote progress.json."""
        for name, value in (("step", step), ("total", total)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"progress {name} must be a non-negative integer, got {value!r}")
        clashes = sorted(set(fields) & set(_RESERVED))
        if clashes:
            raise ValueError(f"progress fields {clashes} are reserved; use other names")
        now = self._clock()
        if self._start is None:
            self._start = (now, step)
        start_time, start_step = self._start
        # Rate since the first update, so a job resumed at step 5000 is not credited with it.
        rate = (step - start_step) / (now - start_time) if now > start_time else None
        if rate is not None and rate <= 0:
            rate = None
        eta = (total - step) / rate if rate and total >= step else None
        document = {
            "step": step,
            "total": total,
            "fraction": min(1.0, step / total) if total else None,
            "rate": rate,
            "eta_seconds": eta,
            "updated": utc_now_iso(),
            **fields,
        }
        is_final = total > 0 and step >= total
        due = self._last_write is None or now - self._last_write >= self._min_interval_s
        self._pending = document
        if is_final or due:
            return self._flush(now)
        return False

    def close(self) -> None:
        """Write the last update if the throttle held it back."""
        if self._pending is not None:
            self._flush(self._clock())

    def _flush(self, now: float) -> bool:
        assert self._pending is not None
        try:
            self._store.write_json(PROGRESS_NAME, self._pending)
        except StoreError as exc:
            log.warning("could not write %s: %s", self._store.uri_of(PROGRESS_NAME), exc)
            return False
        self._pending = None
        self._last_write = now
        return True

    def __enter__(self) -> ProgressWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def write_metrics(store: Store, metrics: dict[str, Any]) -> None:
    """Write metrics.json (plain JSON: NaN and non-JSON values are refused with a clear error)."""
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
    store.write_json(METRICS_NAME, metrics)


def read_progress(store: Store) -> dict[str, Any] | None:
    """The job's last written progress, or None if it has not written any yet."""
    try:
        progress = store.read_json(PROGRESS_NAME)
    except NotFoundError:
        return None
    if not isinstance(progress, dict):
        raise StoreError(f"{store.uri_of(PROGRESS_NAME)} is not a JSON object")
    return progress
