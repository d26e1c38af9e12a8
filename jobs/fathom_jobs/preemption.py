"""SIGTERM: a training stage checkpoints at the step's end, then exits 143; anything else exits 143 at once.

Kubernetes sends SIGTERM to every container of a pod it takes away (preemption, eviction, a drained
node, a suspended or deleted Job) and SIGKILL `terminationGracePeriodSeconds` later. The job's
process is PID 1 of its container, and PID 1 ignores a signal it has no handler for, so without
`install_exit_on_sigterm` the pod would sit out its whole grace period and be killed unsaved.

- Outside training `install_exit_on_sigterm` turns SIGTERM into `Terminated` (a SystemExit with
  code 143), so `finally` blocks run and the entry point uploads the job's log.
- Around `trainer.train()` a `Preemption` only sets a flag. Its callback reads it at every
  optimizer step's end, after `StoreCheckpoints`, and asks the Trainer to save and stop: the
  Trainer writes `checkpoint-<step>`, `StoreCheckpoints.on_save` uploads and commits it under
  `checkpoints/step-<N>/` (the periodic path, so the next attempt's `resume_point` finds it), the
  loop ends, and `exit_if_preempted` raises `Preempted` (exit 143: the attempt counts as
  interrupted, never as done; the final model is not saved). At the last step too: the retry
  then only saves the final model. Once training has ended normally, a SIGTERM no longer stops
  the final save and commit (it only sets the flag). The grace period has to cover the rest of
  the current step plus one checkpoint save and upload.

Every rank must stop at the same step: the save gathers ZeRO shards and the upload waits on
collectives. Pods do not get SIGTERM at the same moment (each kubelet sends its own), and
preempting one node's pod sends nothing to the others, so the flag is all-reduced (MAX) over the
world at every step end: one 4-byte collective per optimizer step. Under torchrun the launcher
forwards SIGTERM to torchrun, which forwards it to its workers (`launch.relaunch_distributed`).

Why not transformers' own `enable_jit_checkpoint` (5.17, trainer_jit_checkpoint.py): it waits 3 s
after SIGTERM before acting, calls `Trainer._save_checkpoint` without the `on_save` callbacks (so
the checkpoint would stay on the pod's disk, never reaching the store), does not agree across
ranks, and lets `train()` return normally, after which the stage would commit a half-trained model.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger("fathom_jobs.preemption")

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, what a shell reports for a process ended by SIGTERM


class Terminated(SystemExit):
    """SIGTERM outside training: stop now (SystemExit, so `except Exception` does not swallow it)."""

    def __init__(self, message: str = "terminated by SIGTERM") -> None:
        super().__init__(EXIT_TERMINATED)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Preempted(Terminated):
    """Training stopped on SIGTERM after committing a checkpoint; the next attempt resumes from it."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def install_exit_on_sigterm() -> None:
    """SIGTERM raises `Terminated` in the main thread (the process's default until training)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


class Preemption:
    """`with Preemption() as preemption:` around training; `preemption.callback` goes to the Trainer
    after StoreCheckpoints; `preemption.exit_if_preempted()` once `train()` has returned."""

    def __init__(self) -> None:
        self.requested = False  # SIGTERM seen by this process
        self.stopped_at: int | None = None  # the step training stopped at because some rank saw it
        self._previous: Any = None
        self._installed = False
        self._callback: Any = None

    @property
    def callback(self) -> Any:
        """The TrainerCallback that stops training (built on first use: transformers is heavy)."""
        if self._callback is None:
            self._callback = stop_on_sigterm(self)
        return self._callback

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            log.warning("SIGTERM: saving a checkpoint at the end of this step, then exiting")
        self.requested = True

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def exit_if_preempted(self) -> None:
        """Raise `Preempted` when training stopped early on SIGTERM (after its checkpoint)."""
        if self.stopped_at is not None:
            raise Preempted(f"stopped by SIGTERM at step {self.stopped_at} after committing its checkpoint; "
                            "the next attempt resumes from it")


def agreed(flag: bool, device: Any) -> bool:
    """True on every rank when any rank's flag is set (a MAX all-reduce; no collective alone)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    # NCCL reduces CUDA tensors only; args.device is this rank's GPU there and the CPU under gloo.
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def stop_on_sigterm(preemption: Preemption) -> Any:
    from transformers import TrainerCallback

    class StopOnSigterm(TrainerCallback):
        """At each step's end: when any rank saw SIGTERM, save this step (StoreCheckpoints uploads
        and commits it, even at the last step) and stop training."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if preemption.stopped_at is None and agreed(preemption.requested, args.device):
                preemption.stopped_at = state.global_step
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopOnSigterm()


def train_then_commit(trainer: Any, tokenizer: Any, preemption: Preemption, *, store: Any, fingerprint: str,
                      workdir: Any, resume_dir: Any, started: float, resumed_from: int | None,
                      metrics: Any) -> None:
    """Every training stage's ending: train (resuming), stop with a checkpoint on SIGTERM, else save the
    final model once and commit it with `metrics(trainer)` added to the trainer's own."""
    from . import final_model

    with preemption:  # SIGTERM from here on: checkpoint at the step's end; once trained, finish the commit
        output = trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
        preemption.exit_if_preempted()
        final_dir = workdir / "model"
        final_model.save_final_model(trainer, tokenizer, final_dir)
        if trainer.is_world_process_zero():
            final_model.commit_model(store, final_dir, fingerprint, {
                **final_model.training_metrics(trainer, output, started, resumed_from), **metrics(trainer)})
