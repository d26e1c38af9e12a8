"""Training checkpoints in the store, written from every node, and resume from them. (The store's
own checkpoint layout and listing are `fathom_jobs.store.checkpoints`.)

Checkpoints. Every `saveSteps` the Trainer writes `checkpoint-<step>/` (weights, optimizer,
scheduler, RNG states, trainer_state.json with the step and data position) on every node: ZeRO
puts each rank's shard on its own node's disk. `StoreCheckpoints` then has each node upload its
own files, all nodes at once, under `checkpoints/step-<N>/`; global rank 0 commits the manifest
(every node's files) once all uploads are in and prunes the store to keepCheckpoints, and every
node deletes its local copies once they are committed. The collectives around the upload wait
`collectiveTimeoutMinutes`. No checkpoint is written at the last step: the final model is saved
once (bf16 safetensors) and committed as the stage's output. On a restart `resume_point` picks the
newest of the operator's `resume_from` and this stage's own newest checkpoint made from the same
inputs; the Trainer then restores everything and skips the batches already seen, so the step count
and the curriculum position continue where they stopped. On SIGTERM (preemption, eviction, a
suspended Job) the stage saves and commits one more checkpoint at the current step's end, the same
way, and exits 143 (`fathom_jobs.preemption`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback  # imported by the training stages only, like fathom_jobs.training

from .errors import StageInputError
from .inputs import store_for
from .specs import JobSpec, StorageOptions
from .store import FileEntry, Manifest, Store, latest_checkpoint
from .store.checkpoints import CHECKPOINTS_DIR, checkpoint_key, complete_checkpoints
from .store.errors import StoreError
from .store.manifest import MANIFEST_NAME, hash_file
from .training import work_dir

log = logging.getLogger("fathom_jobs.training")  # the name these log lines had before the split


# --------------------------------------------------------------------------------------- resume
def checkpoint_step(uri: str, storage: StorageOptions | None = None) -> int:
    match = re.search(r"step-(\d+)/?$", uri)
    if match:
        return int(match.group(1))
    manifest = store_for(uri, storage).read_manifest()
    if manifest is None or not isinstance(manifest.extra.get("step"), int):
        raise StageInputError(f"resume_from {uri} is not a complete checkpoint")
    return manifest.extra["step"]


RESUME_DIR = "resume"  # under work_dir(job): the verified checkpoint and the decision every rank reads
DECISION = "decision.json"


def _resume_candidates(job: JobSpec, store: Store, fingerprint: str) -> list[tuple[int, str]]:
    """Checkpoints worth resuming from, newest first: the operator's resume_from and every complete
    checkpoint of our own made from the same inputs and parameters (its manifest says so)."""
    candidates: dict[str, int] = {}
    if job.resume_from:
        try:
            candidates[job.resume_from] = checkpoint_step(job.resume_from, job.storage)
        except (StageInputError, StoreError, ValueError) as exc:
            log.warning("ignoring resume_from %s: %s", job.resume_from, exc)
    for step, uri in complete_checkpoints(store):
        try:
            manifest = store.read_manifest(checkpoint_key(step))
        except StoreError as exc:
            log.warning("ignoring %s: %s", uri, exc)
            continue
        if manifest is not None and manifest.extra.get("fingerprint") == fingerprint:
            candidates.setdefault(uri, step)
        else:
            log.warning("ignoring %s: it was made from other inputs or parameters", uri)
    return sorted(((step, uri) for uri, step in candidates.items()), reverse=True)


def resume_point(job: JobSpec, store: Store, fingerprint: str) -> tuple[int, str] | None:
    """(step, uri) to resume from: the newest intact one of the operator's resume_from and our own
    checkpoints made from the same inputs, or None to start over.

    Intact means downloaded and every file matching its manifest's sha256: a corrupt or truncated
    checkpoint is skipped for the previous complete one. The first call in this attempt's work
    directory (the node's first process) downloads and records the decision; later calls (the
    node's other ranks) read it, so every rank resumes from the same step and only one downloads.
    """
    where = work_dir(job) / RESUME_DIR
    decision = where / DECISION
    if decision.is_file():
        found = json.loads(decision.read_text())
        return (int(found["step"]), str(found["uri"])) if found else None
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True, exist_ok=True)
    chosen: tuple[int, str] | None = None
    for step, uri in _resume_candidates(job, store, fingerprint):
        target = where / f"checkpoint-{step}"
        try:
            store_for(uri, job.storage).download_dir("", target)  # verifies sizes and sha256
        except StoreError as exc:
            log.warning("not resuming from %s: %s; trying the previous checkpoint", uri, str(exc)[:500])
            shutil.rmtree(target, ignore_errors=True)
            continue
        chosen = (step, uri)
        break
    decision.write_text(json.dumps({"step": chosen[0], "uri": chosen[1]} if chosen else None))
    if chosen is None and (job.resume_from or latest_checkpoint(store) is not None):
        log.warning("no intact checkpoint to resume from: starting over")
    return chosen


def download_resume(point: tuple[int, str], job: JobSpec, local: Path) -> Path:
    """Put checkpoint `point` at local/checkpoint-<step> (where the Trainer resumes from): the copy
    resume_point verified when there is one, else a fresh verified download."""
    step, uri = point
    target = local / f"checkpoint-{step}"
    shutil.rmtree(target, ignore_errors=True)
    verified = work_dir(job) / RESUME_DIR / f"checkpoint-{step}"
    if verified.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(verified), str(target))
    else:
        store_for(uri, job.storage).download_dir("", target)
    log.info("resuming from %s (step %d)", uri, step)
    return target


# ------------------------------------------------------------------------------------- upload
class StoreCheckpoints(TrainerCallback):
    """Uploads each checkpoint the Trainer saves from every node, then prunes store and local disks.

    It also cancels the Trainer's save at the last step: that checkpoint would duplicate the final
    model, which the stage saves and commits once.
    """

    def __init__(self, store: Store, keep: int, fingerprint: str) -> None:
        self.store, self.keep, self.fingerprint = store, keep, fingerprint

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False
        return control

    def on_save(self, args, state, control, **kwargs):
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        upload_checkpoint(self.store, state.global_step, local, keep=self.keep,
                          extra={"fingerprint": self.fingerprint})
        return control


@dataclass(frozen=True)
class World:
    """This process's place among the training processes, and the two collectives the upload needs."""

    rank: int
    size: int
    local_rank: int
    barrier: Callable[[], None]
    all_gather: Callable[[Any], list[Any]]


def torch_world() -> World:
    """The torch.distributed world (torchrun sets LOCAL_RANK), or a world of one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return World(0, 1, 0, lambda: None, lambda obj: [obj])
    size = dist.get_world_size()

    def all_gather(obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * size
        dist.all_gather_object(gathered, obj)
        return gathered

    return World(dist.get_rank(), size, int(os.environ.get("LOCAL_RANK", "0")), dist.barrier, all_gather)


def upload_checkpoint(store: Store, step: int, local: Path, *, keep: int, extra: dict[str, Any],
                      world: World | None = None) -> None:
    """Upload checkpoint `step` from every node at once; commit it when every node's files are in.

    Called by every process. The first process of each node lists its node's files; each file goes
    up once, from the first node that has it (ZeRO shards and per-rank RNG states exist on one node
    only; files every node wrote come from the first); the nodes upload in parallel. Global rank 0
    commits the manifest over all of them after the last upload and prunes the store to `keep`;
    then every node deletes its local checkpoint copies. The collectives wait as long as the process
    group's timeout (collectiveTimeoutMinutes).
    """
    world = world or torch_world()
    world.barrier()  # every rank has written its part of the checkpoint
    key = checkpoint_key(step)
    if world.rank == 0:
        store.delete_prefix(key)  # leftovers of an attempt that died while saving this step
    listing = local_listing(local) if world.local_rank == 0 else None
    listings = world.all_gather(listing)  # also: nobody uploads before the leftovers are gone
    nodes = [rank for rank, found in enumerate(listings) if found is not None]
    uploads = assign_uploads([listings[rank] for rank in nodes])
    mine = uploads[nodes.index(world.rank)] if world.rank in nodes else []
    entries = upload_files(store, key, local, mine)
    gathered = world.all_gather(entries)  # every node's upload is in
    if world.rank == 0:
        files = {path: entry for part in gathered for path, entry in part.items()}
        commit_checkpoint(store, step, files, keep=keep, extra={**extra, "nodes": len(nodes)})
    world.barrier()  # committed: the local copies can go
    if world.local_rank == 0:
        prune_local_checkpoints(local.parent, step)


def local_listing(local: Path) -> dict[str, int]:
    """Relative path -> size of every file of one node's checkpoint directory."""
    if not local.is_dir():
        return {}
    return {path.relative_to(local).as_posix(): path.stat().st_size
            for path in sorted(local.rglob("*")) if path.is_file() and path.name != MANIFEST_NAME}


def assign_uploads(listings: list[dict[str, int]]) -> list[list[str]]:
    """Per node (in order), the files it uploads: each path once, by the first node that has it."""
    taken: set[str] = set()
    plan = []
    for listing in listings:
        mine = sorted(path for path in listing if path not in taken)
        taken.update(mine)
        plan.append(mine)
    return plan


def upload_files(store: Store, prefix: str, local: Path, paths: list[str]) -> dict[str, FileEntry]:
    """Upload `paths` (relative to local) under prefix, several at a time; their manifest entries."""
    def put(path: str) -> tuple[str, FileEntry]:
        entry = hash_file(local / path)
        store.upload_file(local / path, f"{prefix}/{path}")
        return path, entry

    if not paths:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(store.parallel_files, len(paths)))) as pool:
        return dict(pool.map(put, paths))


def commit_checkpoint(store: Store, step: int, files: dict[str, FileEntry], *, keep: int,
                      extra: dict[str, Any]) -> None:
    """Write checkpoint `step`'s manifest (its files are uploaded), then prune the store to `keep`.

    The same rule as `fathom_jobs.store.save_checkpoint`: the newest `keep` complete checkpoints
    stay; older complete ones and incomplete ones older than this step go; this one never does.
    """
    manifest = Manifest(files=dict(sorted(files.items())), extra={"step": step, **extra})
    store.write_bytes(f"{checkpoint_key(step)}/{MANIFEST_NAME}", manifest.to_json().encode())
    steps: dict[int, bool] = {}
    for name in store.list(CHECKPOINTS_DIR):
        parts = name.split("/")
        if len(parts) >= 3 and (match := re.fullmatch(r"step-(\d+)", parts[1])):
            number = int(match.group(1))
            steps[number] = steps.get(number, False) or (len(parts) == 3 and parts[2] == MANIFEST_NAME)
    complete = sorted((s for s, done in steps.items() if done), reverse=True)
    stale = set(complete[keep:]) | {s for s, done in steps.items() if not done and s < step}
    for old in sorted(stale - {step}):
        log.info("pruning checkpoint %s", store.uri_of(checkpoint_key(old)))
        store.delete_prefix(checkpoint_key(old))


def prune_local_checkpoints(output_dir: Path, step: int) -> None:
    """Delete this node's local `checkpoint-<n>` copies up to `step` (they are in the store)."""
    for path in output_dir.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and int(match.group(1)) <= step and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
