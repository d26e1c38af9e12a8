"""Training checkpoints under `checkpoints/step-<N>/`, each committed by its own manifest."""

from __future__ import annotations

import logging
import re
from typing import Any

from .base import PathLike, Store
from .errors import NotFoundError
from .manifest import MANIFEST_NAME
from .transfer import ProgressCallback

log = logging.getLogger("fathom_jobs.store")

CHECKPOINTS_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_key(step: int) -> str:
    return f"{CHECKPOINTS_DIR}/step-{step}"


def _checkpoint_steps(store: Store) -> dict[int, bool]:
    """Every step with anything stored under it -> whether its manifest is committed."""
    steps: dict[int, bool] = {}
    for key in store.list(CHECKPOINTS_DIR):
        parts = key.split("/")
        if len(parts) < 3 or not (match := _STEP_DIR.match(parts[1])):
            continue
        step = int(match.group(1))
        committed = len(parts) == 3 and parts[2] == MANIFEST_NAME
        steps[step] = steps.get(step, False) or committed
    return steps


def _check_step(step: int) -> None:
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative integer, got {step!r}")


def save_checkpoint(
    store: Store,
    step: int,
    local_dir: PathLike,
    *,
    keep: int = 2,
    extra: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> str:
    """Upload local_dir as checkpoint `step`, then prune; returns the checkpoint's URI.

    Pruning runs only after the new checkpoint is committed, so a crash never leaves fewer
    than `keep` complete checkpoints. It keeps the newest `keep` complete ones and removes
    older complete ones and incomplete ones older than this step (leftovers of killed uploads).
    """
    _check_step(step)
    if not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
    key = checkpoint_key(step)
    store.upload_dir(local_dir, key, extra={"step": step, **(extra or {})}, progress=progress)
    steps = _checkpoint_steps(store)
    complete = sorted((s for s, done in steps.items() if done), reverse=True)
    stale = set(complete[keep:]) | {s for s, done in steps.items() if not done and s < step}
    stale.discard(step)  # even if newer ones exist (a rerun), never delete what was just saved
    for old in sorted(stale):
        log.info("pruning checkpoint %s", store.uri_of(checkpoint_key(old)))
        store.delete_prefix(checkpoint_key(old))
    return store.uri_of(key)


def complete_checkpoints(store: Store) -> list[tuple[int, str]]:
    """(step, uri) of every committed checkpoint, newest first."""
    steps = sorted((step for step, done in _checkpoint_steps(store).items() if done), reverse=True)
    return [(step, store.uri_of(checkpoint_key(step))) for step in steps]


def latest_checkpoint(store: Store) -> tuple[int, str] | None:
    """(step, uri) of the newest committed checkpoint; uncommitted ones are skipped."""
    complete = [step for step, done in _checkpoint_steps(store).items() if done]
    if not complete:
        return None
    step = max(complete)
    return step, store.uri_of(checkpoint_key(step))


def download_checkpoint(
    store: Store,
    local_dir: PathLike,
    *,
    step: int | None = None,
    progress: ProgressCallback | None = None,
) -> int:
    """Download checkpoint `step` (default: the newest complete one), verified; returns the step."""
    if step is None:
        found = latest_checkpoint(store)
        if found is None:
            raise NotFoundError(f"no complete checkpoint under {store.uri_of(CHECKPOINTS_DIR)}")
        step = found[0]
    _check_step(step)
    store.download_dir(checkpoint_key(step), local_dir, progress=progress)
    return step
