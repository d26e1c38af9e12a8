"""What the sft and grpo stages share: trainer arguments, checkpoints in the store, resume, progress,
the final bf16 save. (Re-running a stage under torchrun lives in `fathom_jobs.launch`.)

DeepSpeed. `configs/zero3.json` and `configs/zero2.json` ship with the package; their "auto"
values (batch sizes, clipping, bf16) are filled in by the HF Trainer from the stage's parameters,
and ZeRO-3 gathers the 16-bit weights when a model is saved, so checkpoints and the final model
are ordinary safetensors. A single process still needs a process group, so
`launch.ensure_process_group_env` provides the rendezvous variables torchrun would have set.

Checkpoints. The Trainer writes `checkpoint-<step>/` (weights, optimizer, scheduler, RNG states,
trainer_state.json with the step and data position); `StoreCheckpoints` uploads it through
`fathom_jobs.store.save_checkpoint` (its own manifest, pruned to keepCheckpoints). On a restart
`resume_point` picks the newest of the operator's `resume_from` and this stage's own newest
checkpoint made from the same inputs; the Trainer then restores everything and skips the batches
already seen, so the step count and the curriculum position continue where they stopped.
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
    save_checkpoint,
    write_metrics,
)
from .store.checkpoints import checkpoint_key
from .store.manifest import MANIFEST_NAME, hash_file

log = logging.getLogger("fathom_jobs.training")

CONFIG_DIR = Path(__file__).parent / "configs"
# Files the HF Trainer writes into a model directory that a model artifact does not need.
NOT_PART_OF_MODEL = ("training_args.bin", "README.md")


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


def trainer_arguments(params: TrainingParams, output_dir: Path) -> dict[str, Any]:
    """The TrainingArguments both trainers take from the shared parameters."""
    if params.liger and importlib.util.find_spec("liger_kernel") is None:
        raise StageInputError("liger: true needs the liger-kernel package (the GPU train image has it)")
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
        "save_strategy": "steps",
        "save_steps": params.save_steps,
        "save_total_limit": 1,  # on local disk; the store keeps keepCheckpoints
        "logging_steps": 1,  # progress.json wants every step's loss
        "report_to": "none",
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
    }


def model_load_kwargs(params: TrainingParams) -> dict[str, Any]:
    """Weights in bf16 where DeepSpeed keeps fp32 master copies; fp32 otherwise (Trainer autocasts)."""
    import torch

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if has_gpu() and params.deepspeed != "none" else torch.float32}
    if has_gpu() and importlib.util.find_spec("flash_attn") is not None:
        kwargs["attn_implementation"] = "flash_attention_2"  # varlen kernels for packed sequences
    else:
        kwargs["attn_implementation"] = "sdpa"  # packed sequences get a block-diagonal mask
    return kwargs


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


def resume_point(job: JobSpec, store: Store, fingerprint: str) -> tuple[int, str] | None:
    """(step, uri) to resume from: the newer of the operator's choice and our own newest checkpoint.

    Our own checkpoint counts only if it was made from the same inputs and parameters (its
    manifest records the stage fingerprint); the operator's resume_from is taken as given.
    """
    candidates = []
    if job.resume_from:
        candidates.append((checkpoint_step(job.resume_from, job.storage), job.resume_from))
    own = latest_checkpoint(store)
    if own is not None:
        manifest = store.read_manifest(checkpoint_key(own[0]))
        if manifest is not None and manifest.extra.get("fingerprint") == fingerprint:
            candidates.append(own)
        else:
            log.warning("ignoring %s: it was made from other inputs or parameters", own[1])
    return max(candidates) if candidates else None


def download_resume(point: tuple[int, str], job: JobSpec, local: Path) -> Path:
    step, uri = point
    target = local / f"checkpoint-{step}"
    shutil.rmtree(target, ignore_errors=True)
    store_for(uri, job.storage).download_dir("", target)
    log.info("resuming from %s (step %d)", uri, step)
    return target


# ---------------------------------------------------------------------------------- callbacks
class StoreCheckpoints(TrainerCallback):
    """Uploads each checkpoint the Trainer saves, then prunes the store to `keep`."""

    def __init__(self, store: Store, keep: int, fingerprint: str) -> None:
        self.store, self.keep, self.fingerprint = store, keep, fingerprint

    def on_save(self, args, state, control, **kwargs):
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        upload_checkpoint(self.store, state.global_step, local, keep=self.keep,
                          extra={"fingerprint": self.fingerprint})
        return control


def upload_checkpoint(store: Store, step: int, local: Path, *, keep: int, extra: dict[str, Any]) -> None:
    """Upload one checkpoint from every node: ZeRO writes each rank's optimizer shard on its own node.

    Nodes other than the first upload their files first; the first node then commits the
    checkpoint through `save_checkpoint` and extends its manifest with the other nodes' files, so
    a download gets every shard and the checkpoint is complete only once all of them are in.
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not distributed:
        save_checkpoint(store, step, local, keep=keep, extra=extra)
        return
    dist.barrier()  # every rank has written its shard
    rank = dist.get_rank()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or dist.get_world_size())  # torchrun sets it
    entries: dict[str, FileEntry] = {}
    if rank % per_node == 0 and rank // per_node > 0:  # the first process of every other node
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = path.relative_to(local).as_posix()
            entries[rel] = hash_file(path)
            store.upload_file(path, f"{checkpoint_key(step)}/{rel}")
    gathered: list[dict[str, FileEntry]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, entries)
    if rank == 0:
        save_checkpoint(store, step, local, keep=keep, extra={**extra, "nodes": len([g for g in gathered if g]) + 1})
        others = {path: entry for part in gathered for path, entry in part.items()}
        if others:
            manifest = store.read_manifest(checkpoint_key(step))
            files = {**others, **manifest.files}  # the first node's copy wins where both wrote a file
            combined = Manifest(files=dict(sorted(files.items())), fingerprint=manifest.fingerprint,
                                created=manifest.created, extra=manifest.extra)
            store.write_bytes(f"{checkpoint_key(step)}/{MANIFEST_NAME}", combined.to_json().encode())
    dist.barrier()


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


def _camel(name: str) -> str:
    head, *rest = re.split(r"[_/]", name)
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# --------------------------------------------------------------------------------- final model
def save_final_model(trainer, tokenizer, out_dir: Path) -> None:
    """Weights as bf16 safetensors with tokenizer and chat template (every rank calls this)."""
    trainer.save_model(str(out_dir))  # ZeRO-3: gathers the 16-bit weights onto rank 0
    if not trainer.is_world_process_zero():
        return
    cast_safetensors(out_dir, "bfloat16")
    tokenizer.save_pretrained(str(out_dir))  # tokenizer files and chat_template.jinja
    for name in NOT_PART_OF_MODEL:
        (out_dir / name).unlink(missing_ok=True)


def cast_safetensors(model_dir: Path, dtype_name: str) -> None:
    """Rewrite a saved model's floating-point tensors in `dtype_name`, one shard at a time, and say
    so in config.json.

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
    if index.exists():
        document = json.loads(index.read_text())
        document["metadata"] = {**document.get("metadata", {}), "total_size": total}
        document["weight_map"] = dict(sorted(weight_map.items()))
        index.write_text(json.dumps(document, indent=2))
    config["dtype"] = dtype_name
    config.pop("torch_dtype", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


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
