"""What the sft and grpo stages share: trainer arguments, the attempt's work directory, progress and
logs. Checkpoints in the store and resume are `fathom_jobs.checkpoints`; the final bf16 save and its
commit `fathom_jobs.final_model`; re-running a stage under torchrun `fathom_jobs.launch`.

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

Logs. `reportTo: tensorboard` (the default) writes TensorBoard event files on global rank 0 and
uploads them to `logs/attempt-<N>/` under the stage prefix with every checkpoint and at the end
(beside the model, not part of its manifest); `reportTo: wandb` reports to Weights & Biases with
WANDB_API_KEY from the stage's `wandbApiKeySecret`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback  # this module serves the training stages only

from .errors import StageInputError
from .inputs import cache_root
from .launch import ensure_process_group_env
from .specs import JobSpec, TrainingParams
from .store import ProgressWriter, Store

CONFIG_DIR = Path(__file__).parent / "configs"
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


# ---------------------------------------------------------------------------------- callbacks
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
