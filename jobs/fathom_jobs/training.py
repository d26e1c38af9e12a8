"""What the sft and grpo stages share: trainer arguments, checkpoints in the store, resume, progress,
the final bf16 save. (Re-running a stage under torchrun lives in `fathom_jobs.launch`.)

DeepSpeed. `configs/zero3.json` and `configs/zero2.json` ship with the package; their "auto"
values (batch sizes, clipping, bf16) are filled in by the HF Trainer from the stage's parameters,
and ZeRO-3 gathers the 16-bit weights when a model is saved, so checkpoints and the final model
are ordinary safetensors. A single process still needs a process group, so
`launch.ensure_process_group_env` provides the rendezvous variables torchrun would have set.

Attention. On GPUs the model runs FlashAttention-2 (`flash_attention_2`, the flash-attn package the
train image builds against its torch): TRL's padding-free collator hands it position_ids that
restart at every chain plus the chains' cumulative lengths, and its varlen kernel attends within
each chain. Without it transformers would build a dense maxLength x maxLength block-diagonal mask
for every packed block, so a packed stage on a GPU without flash-attn stops with a one-line input
error. The CPU path (tests, demo) keeps sdpa.

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
and the curriculum position continue where they stopped.

Logs. `reportTo: tensorboard` (the default) writes TensorBoard event files on global rank 0 and
uploads them to `logs/attempt-<N>/` under the stage prefix with every checkpoint and at the end
(beside the model, not part of its manifest); `reportTo: wandb` reports to Weights & Biases with
WANDB_API_KEY from the stage's `wandbApiKeySecret`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback  # this module serves the training stages only

from .errors import StageInputError
from .inputs import cache_root, store_for
from .launch import ensure_process_group_env
from .specs import JobSpec, StorageOptions, TrainingParams
from .store import (
    FileEntry,
    Manifest,
    ProgressWriter,
    Store,
    latest_checkpoint,
    write_metrics,
)
from .store.checkpoints import CHECKPOINTS_DIR, checkpoint_key, complete_checkpoints
from .store.errors import StoreError
from .store.manifest import MANIFEST_NAME, hash_file

log = logging.getLogger("fathom_jobs.training")

CONFIG_DIR = Path(__file__).parent / "configs"
# Files the HF Trainer writes into a model directory that a model artifact does not need.
NOT_PART_OF_MODEL = ("training_args.bin", "README.md")
# The attention implementation with a varlen kernel for padding-free packed batches (flash-attn).
VARLEN_ATTENTION = "flash_attention_2"
LOGS_DIR = "logs"  # TensorBoard event files under the stage prefix, beside the model


# ---------------------------------------------------------------------------------- trainer args
def run_training(job: JobSpec, params: TrainingParams, train: Callable[..., None],
                 check: Callable[[], None] | None = None) -> None:
    """The shape every training stage's run() shares: skip when the store already holds this output,
    re-launch under torchrun when the job spans GPUs, else train here; a worker's bad input becomes
    the pod's one-line message."""
    from . import launch
    from .memo import job_output

    store, fingerprint, done = job_output(job)
    if done:
        return
    if check is not None:
        check()
    if launch.relaunch_distributed(job):
        return
    try:
        train(job, params, store, fingerprint)
    except StageInputError as exc:
        launch.report_input_error(exc)
        raise


def deepspeed_config(choice: str) -> str | None:
    return None if choice == "none" else str(CONFIG_DIR / f"{choice}.json")


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def flash_attn_available() -> bool:
    """flash-attn (FlashAttention-2) importable and usable here, by transformers' own check."""
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


def attention_implementation(packed: bool) -> str:
    """FlashAttention-2 on GPUs (required when sequences are packed); sdpa on CPUs."""
    if not has_gpu():
        return "sdpa"  # tests and the demo: short packed blocks get a small block-diagonal mask
    if flash_attn_available():
        return VARLEN_ATTENTION
    if packed:
        raise StageInputError(
            "packing on a GPU needs the flash-attn package (the train image builds it): without its varlen "
            "kernel every packed block would get a dense maxLength x maxLength attention mask")
    return "sdpa"


def _check_reporting(params: TrainingParams) -> None:
    if params.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise StageInputError("reportTo: tensorboard needs the tensorboard package (the train image has it); "
                              "set reportTo: none to train without logs")
    if params.report_to == "wandb":
        if importlib.util.find_spec("wandb") is None:
            raise StageInputError("reportTo: wandb needs the wandb package (the GPU train image has it)")
        if not os.environ.get("WANDB_API_KEY"):
            raise StageInputError("reportTo: wandb needs WANDB_API_KEY in the environment: set wandbApiKeySecret "
                                  "to a Secret that holds it")


def trainer_arguments(params: TrainingParams, output_dir: Path) -> dict[str, Any]:
    """The TrainingArguments both trainers take from the shared parameters."""
    if params.liger and importlib.util.find_spec("liger_kernel") is None:
        raise StageInputError("liger: true needs the liger-kernel package (the GPU train image has it)")
    _check_reporting(params)
    gpu = has_gpu()
    if params.deepspeed != "none":
        ensure_process_group_env()
    return {
        "output_dir": str(output_dir),
        "learning_rate": params.learning_rate,
        "lr_scheduler_type": params.lr_scheduler,
        "warmup_steps": params.warmup_ratio,  # a float below 1 is a fraction of the total steps
        "weight_decay": params.weight_decay,
        "per_device_train_batch_size": params.per_device_batch_size,
        "gradient_accumulation_steps": params.gradient_accumulation_steps,
        "gradient_checkpointing": params.gradient_checkpointing,
        "max_steps": params.max_steps or -1,
        "deepspeed": deepspeed_config(params.deepspeed),
        "use_liger_kernel": params.liger,
        "seed": params.seed,
        "data_seed": params.seed,
        "bf16": gpu,  # mixed precision on GPUs; the CPU path stays in fp32 (tests, demo)
        "use_cpu": not gpu,
        "save_strategy": "steps",  # StoreCheckpoints skips the last step: the final model is saved once
        "save_steps": params.save_steps,
        # Local copies are deleted on every node once committed to the store (StoreCheckpoints).
        "ddp_timeout": params.collective_timeout_minutes * 60,  # covers the slowest node's checkpoint upload
        "logging_steps": 1,  # progress.json wants every step's loss
        # TensorBoard is added by report_callbacks (its event files go to the store); wandb by the Trainer.
        "report_to": ["wandb"] if params.report_to == "wandb" else "none",
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
    }


def model_load_kwargs(params: TrainingParams, packed: bool = False) -> dict[str, Any]:
    """Weights in bf16 where DeepSpeed keeps fp32 master copies; fp32 otherwise (Trainer autocasts).
    Attention: `attention_implementation` (a packed stage on a GPU insists on the varlen kernel)."""
    import torch

    return {"dtype": torch.bfloat16 if has_gpu() and params.deepspeed != "none" else torch.float32,
            "attn_implementation": attention_implementation(packed)}


def work_dir(job: JobSpec) -> Path:
    """Same path on every rank of a node (the Trainer's ranks share one checkpoint directory)."""
    key = hashlib.sha256(f"{job.output}#{job.attempt}".encode()).hexdigest()[:16]
    return cache_root() / "train" / key


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


# ---------------------------------------------------------------------------------- callbacks
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


class StoreProgress(TrainerCallback):
    """progress.json every step: step, total, loss, tokens/s (ETA comes from the writer)."""

    def __init__(self, store: Store, metric_keys: tuple[str, ...] = ()) -> None:
        self.writer = ProgressWriter(store)
        self.metric_keys = metric_keys
        self.started: tuple[float, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = (time.monotonic(), state.num_input_tokens_seen)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return control
        started_at, tokens_at_start = self.started or (time.monotonic(), 0)
        elapsed = time.monotonic() - started_at
        tokens = int(state.num_input_tokens_seen)
        fields = {"loss": float(logs["loss"]), "tokensSeen": tokens,
                  "tokensPerSecond": (tokens - tokens_at_start) / elapsed if elapsed > 0 else None}
        fields.update({_camel(k): float(logs[k]) for k in self.metric_keys if k in logs})
        self.writer.update(state.global_step, max(state.max_steps, state.global_step), **fields)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.writer.close()
        return control


class StoreTensorBoard(TrainerCallback):
    """TensorBoard event files written on global rank 0 (transformers' TensorBoardCallback) into a
    local directory, uploaded to `prefix` in the store after every checkpoint and at the end."""

    def __init__(self, store: Store, local_dir: Path, prefix: str) -> None:
        from transformers.integrations import TensorBoardCallback

        self.tensorboard = TensorBoardCallback()
        self.tensorboard.logging_dir = str(local_dir)
        self.store, self.local_dir, self.prefix = store, local_dir, prefix

    def on_train_begin(self, args, state, control, **kwargs):
        self.tensorboard.on_train_begin(args, state, control, **kwargs)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.tensorboard.on_log(args, state, control, logs=logs, **kwargs)
        return control

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.upload()
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.tensorboard.on_train_end(args, state, control, **kwargs)  # flushes and closes the writer
        if state.is_world_process_zero:
            self.upload()
        return control

    def upload(self) -> None:
        if self.tensorboard.tb_writer is not None:
            self.tensorboard.tb_writer.flush()
        for path in sorted(p for p in self.local_dir.rglob("*") if p.is_file()):
            self.store.upload_file(path, f"{self.prefix}/{path.relative_to(self.local_dir).as_posix()}")


def report_callbacks(job: JobSpec, params: TrainingParams, args, store: Store, workdir: Path) -> list[TrainerCallback]:
    """What reportTo asks for: TensorBoard files in the store's logs/attempt-<N>/, or wandb's run
    (the Trainer's own callback, named after the recipe, stage and attempt), or nothing."""
    args.run_name = f"{job.recipe}/{job.stage}/attempt-{job.attempt}"
    if params.report_to == "wandb":  # the Secret may name the project, entity or server itself
        os.environ.setdefault("WANDB_PROJECT", job.recipe)
        os.environ.setdefault("WANDB_DIR", str(workdir))
    if params.report_to != "tensorboard":
        return []
    return [StoreTensorBoard(store, workdir / LOGS_DIR, f"{LOGS_DIR}/attempt-{job.attempt}")]


def _camel(name: str) -> str:
    head, *rest = re.split(r"[_/]", name)
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# --------------------------------------------------------------------------------- final model
def save_final_model(trainer, tokenizer, out_dir: Path) -> None:
    """Weights as bf16 safetensors with tokenizer and chat template (every rank calls this).

    The only full save at the end (the last step writes no checkpoint): on GPUs the weights come
    out of ZeRO in bf16 and are written once; fp32 weights (the CPU path) are rewritten in bf16."""
    trainer.save_model(str(out_dir))  # ZeRO-3: gathers the 16-bit weights onto rank 0
    if not trainer.is_world_process_zero():
        return
    cast_safetensors(out_dir, "bfloat16")
    tokenizer.save_pretrained(str(out_dir))  # tokenizer files and chat_template.jinja
    for name in NOT_PART_OF_MODEL:
        (out_dir / name).unlink(missing_ok=True)


def cast_safetensors(model_dir: Path, dtype_name: str) -> None:
    """Rewrite a saved model's floating-point tensors in `dtype_name`, one shard at a time, and say
    so in config.json. Weights already all in `dtype_name` are left as they were written.

    A tied output head saved as a tensor of its own (DeepSpeed's state dicts carry it) is dropped,
    so every stage writes the same tensor names for the same architecture and merges line up.
    """
    import torch
    from safetensors.torch import load_file, save_file

    dtype = getattr(torch, dtype_name)
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    files = sorted(model_dir.glob("*.safetensors"))
    drop = _tied_duplicates(config, files)
    if not drop and _all_in_dtype(files, dtype_name):  # ZeRO's gathered 16-bit weights: written once
        files = []
    total = 0
    weight_map: dict[str, str] = {}
    for path in files:
        cast = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
                for k, v in load_file(str(path)).items() if k not in drop}
        total += sum(t.numel() * t.element_size() for t in cast.values())
        weight_map.update(dict.fromkeys(cast, path.name))
        save_file(cast, str(path), metadata={"format": "pt"})
        del cast
    index = model_dir / "model.safetensors.index.json"
    if index.exists() and weight_map:
        document = json.loads(index.read_text())
        document["metadata"] = {**document.get("metadata", {}), "total_size": total}
        document["weight_map"] = dict(sorted(weight_map.items()))
        index.write_text(json.dumps(document, indent=2))
    config["dtype"] = dtype_name
    config.pop("torch_dtype", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


_SAFETENSORS_FLOATS = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _all_in_dtype(files: list[Path], dtype_name: str) -> bool:
    """Every floating-point tensor of every file already in `dtype_name` (read from the headers)."""
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                stored = handle.get_slice(name).get_dtype()
                if _SAFETENSORS_FLOATS.get(stored, dtype_name) != dtype_name:
                    return False
    return True


def _tied_duplicates(config: dict[str, Any], files: list[Path]) -> set[str]:
    import torch
    from safetensors import safe_open

    if not config.get("tie_word_embeddings"):
        return set()
    found: dict[str, Any] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in ("lm_head.weight", "model.embed_tokens.weight"):
                if name in handle.keys():
                    found[name] = handle.get_tensor(name)
    head, embedding = found.get("lm_head.weight"), found.get("model.embed_tokens.weight")
    if head is not None and embedding is not None and torch.equal(head, embedding):
        return {"lm_head.weight"}
    return set()


def commit_model(store: Store, model_dir: Path, fingerprint: str, metrics: dict[str, Any]) -> None:
    """metrics.json, then the model files with the stage's manifest (written last)."""
    write_metrics(store, metrics)
    store.upload_dir(model_dir, "", fingerprint=fingerprint, extra={"kind": "model"})


def training_metrics(trainer, train_output, started: float, resumed_from: int | None) -> dict[str, Any]:
    state = trainer.state
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    return {
        "steps": state.global_step,
        "resumedFromStep": resumed_from,
        "trainLoss": float(train_output.training_loss),
        "finalLoss": float(losses[-1]) if losses else None,
        "tokensSeen": int(state.num_input_tokens_seen),
        "runtimeSeconds": round(time.monotonic() - started, 3),
        "worldSize": trainer.args.world_size,
    }
