"""grpo: RL for correct AND short chains with TRL's GRPOTrainer (the Fathom-R1-14B-RS compression run).

Input: prompts with reference answers (a `prompts` or `chains` dataset, or raw `problems`, which
get the stage's system prompt) and a model. Each prompt is sampled `numGenerations` times up to
`maxCompletionTokens`; the reward (fathom_jobs.rewards) is 1 for a chain that stops on its own with
the right answer under the strict grader, plus a Kimi-1.5 bonus for being short among the correct
chains of its prompt. Generation runs on vLLM colocated with training when `useVllm` is set and a
GPU is present, otherwise on transformers' generate (CPU tests and the demo).

The prompts go through one pass (num_train_epochs = 1) unless maxSteps says otherwise; TRL
shuffles them with the stage's seed, so a resumed run sees the same order.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from typing import Any

from .. import checkpoints, launch, training
from ..datasets import read_dataset
from ..errors import StageInputError
from ..inputs import fetch
from ..preemption import Preemption, train_then_commit
from ..rewards import MAX_RANK_SAFE_WEIGHT, chain_rewards, is_capped
from ..specs import GrpoParams, JobSpec

log = logging.getLogger("fathom_jobs.grpo")
CURVE_POINTS = 50  # the reward curve kept in metrics.json, evenly thinned


# ---------------------------------------------------------------------------------- prompts
def rl_rows(rows: list[dict[str, Any]], system_prompt: str) -> list[dict[str, Any]]:
    """{prompt (messages), answer, id} for every row with a reference answer."""
    prompts = []
    for index, row in enumerate(rows):
        answer = row.get("answer")
        if answer in (None, ""):
            continue
        if row.get("prompt"):
            messages = [{"role": m["role"], "content": m["content"]} for m in row["prompt"]]
        elif row.get("problem"):
            messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": row["problem"]}]
        else:
            raise StageInputError("the RL data needs a `prompt` (messages) or a `problem` column")
        prompts.append({"prompt": messages, "answer": str(answer), "id": str(row.get("id", index))})
    if not prompts:
        raise StageInputError("no prompt has a reference answer to reward against")
    return prompts


def check_group_layout(params: GrpoParams, world_size: int) -> None:
    """TRL needs every generation batch to hold whole groups; say so in the recipe's terms."""
    per_step = params.per_device_batch_size * world_size * params.gradient_accumulation_steps
    if per_step % params.num_generations:
        raise StageInputError(
            f"perDeviceBatchSize x GPUs x gradientAccumulationSteps = {per_step} completions per step, "
            f"which is not a multiple of numGenerations = {params.num_generations}")


# ----------------------------------------------------------------------------------- reward
class CorrectAndShortReward:
    """TRL reward function: correctness (strict grading, capped = wrong) + the length bonus.

    TRL calls it on every process with that process's slice of the generation batch; a prompt's
    group of chains can be spread over several GPUs, so the verdicts and lengths are gathered
    before the bonus is computed and each process keeps its own slice of the result.
    """

    __name__ = "correct_and_short"  # TRL logs rewards/<name>/mean

    def __init__(self, grader, eos_token_ids: list[int], kind: str, weight: float) -> None:
        self.grader = grader
        self.eos_token_ids = eos_token_ids
        self.kind = kind
        self.weight = weight

    def __call__(self, prompts, completions, completion_ids, answer, log_metric=None, **_columns) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        capped = [is_capped(ids, self.eos_token_ids) for ids in completion_ids]
        graded = iter(self.grader.grade_batch(
            [(text, gold) for text, gold, cut in zip(texts, answer, capped, strict=True) if not cut]))
        correct = [False if cut else bool(next(graded)) for cut in capped]
        lengths = [len(ids) for ids in completion_ids]
        groups = [hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:16] for p in prompts]
        everything, start = _gather_everywhere((groups, lengths, correct))
        all_groups, all_lengths, all_correct = (sum((part[i] for part in everything), []) for i in range(3))
        rewards = chain_rewards(all_groups, all_lengths, all_correct, kind=self.kind, weight=self.weight)
        if log_metric is not None:
            log_metric("accuracy", sum(correct) / len(correct))
            log_metric("capped", sum(capped) / len(capped))
        return rewards[start:start + len(correct)]


def _gather_everywhere(local: tuple[list, list, list]) -> tuple[list[tuple[list, list, list]], int]:
    """Every process's part in rank order, and where this process's part starts."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local], 0
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return parts, sum(len(part[0]) for part in parts[:dist.get_rank()])


# ---------------------------------------------------------------------------------- trainer
def grpo_config(params: GrpoParams, output_dir):
    from trl import GRPOConfig

    use_vllm = params.use_vllm and training.has_gpu()
    if use_vllm and importlib.util.find_spec("vllm") is None:
        raise StageInputError("useVllm: true needs the vllm package (the GPU infer/train image has it)")
    arguments = {
        **training.trainer_arguments(params, output_dir),
        "include_num_input_tokens_seen": "no",  # GRPO counts prompt + completion tokens itself
        "num_train_epochs": 1,
        "num_generations": params.num_generations,
        "max_completion_length": params.max_completion_tokens,
        "temperature": params.temperature,
        "loss_type": params.loss_type,
        "beta": params.beta,
        "use_vllm": use_vllm,
    }
    if use_vllm:
        arguments.update(vllm_mode="colocate", vllm_gpu_memory_utilization=params.vllm_gpu_memory_utilization,
                         vllm_tensor_parallel_size=params.vllm_tensor_parallel_size,
                         vllm_enable_sleep_mode=params.vllm_enable_sleep_mode)
    return GRPOConfig(**arguments)


def build_trainer(params: GrpoParams, model_dir, tokenizer, prompts: list[dict[str, Any]], args, grader,
                  callbacks=()):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **training.model_load_kwargs(params))
    eos_ids = model.generation_config.eos_token_id
    eos_ids = sorted({*(eos_ids if isinstance(eos_ids, list) else [eos_ids] if eos_ids is not None else []),
                      tokenizer.eos_token_id})
    reward = CorrectAndShortReward(grader, eos_ids, params.length_reward.kind, params.length_reward.weight)
    return GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(prompts),
                       processing_class=tokenizer, callbacks=list(callbacks))


def reward_summary(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """First/last/mean/max of the reward and accuracy, and the reward curve (thinned)."""
    def series(key: str) -> list[tuple[int, float]]:
        return [(entry["step"], float(entry[key])) for entry in log_history if key in entry]

    rewards = series("reward")
    summary: dict[str, Any] = {}
    for name, key in (("reward", "reward"), ("accuracy", "accuracy"), ("cappedFraction", "capped"),
                      ("meanCompletionTokens", "completions/mean_length")):
        values = [v for _, v in series(key)]
        if values:
            summary[name] = {"first": values[0], "last": values[-1], "mean": sum(values) / len(values),
                             "max": max(values)}
    stride = max(1, -(-len(rewards) // CURVE_POINTS))
    summary["rewardCurve"] = [{"step": s, "reward": v} for s, v in rewards[::stride]]
    return summary


def run(job: JobSpec) -> None:
    params = GrpoParams.model_validate(job.params)
    training.run_training(job, params, train, check=lambda: check_group_layout(
        params, launch.process_layout(job, os.environ).world_size))


def train(job: JobSpec, params: GrpoParams, store, fingerprint: str) -> None:
    from transformers import AutoTokenizer

    from ..grading import Grader

    started = time.monotonic()
    if params.length_reward.weight >= MAX_RANK_SAFE_WEIGHT:
        log.warning("lengthReward.weight %.2f: a long correct chain can score below a wrong one",
                    params.length_reward.weight)
    workdir = training.work_dir(job)
    args = grpo_config(params, workdir / "trainer")
    with args.main_process_first(local=True, desc="inputs"):
        if args.local_process_index == 0:
            shutil.rmtree(workdir, ignore_errors=True)  # leftovers of an earlier run of this attempt
        model_dir = fetch(params.model, kind="model", storage=job.storage)
        table = read_dataset(params.data, job.storage)
        point = checkpoints.resume_point(job, store, fingerprint)
        if point is not None and args.local_process_index == 0:
            checkpoints.download_resume(point, job, workdir / "trainer")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompts = rl_rows(table.to_pylist(), params.system_prompt)
    if args.use_vllm:  # vLLM reserves KV cache for its max length: no more than a prompt + its cap
        args.vllm_max_model_length = params.max_completion_tokens + max(
            len(tokenizer(tokenizer.apply_chat_template(p["prompt"], tokenize=False, add_generation_prompt=True),
                          add_special_tokens=False)["input_ids"]) for p in prompts)
    resume_dir = workdir / "trainer" / f"checkpoint-{point[0]}" if point else None

    preemption = Preemption()
    # The preemption callback after StoreCheckpoints: it may re-enable the save that one cancels.
    callbacks = [checkpoints.StoreCheckpoints(store, params.keep_checkpoints, fingerprint),
                 training.StoreProgress(store, metric_keys=("reward", "accuracy", "completions/mean_length")),
                 *training.report_callbacks(job, params, args, store, workdir), preemption.callback]
    with Grader("strict") as grader:
        trainer = build_trainer(params, model_dir, tokenizer, prompts, args, grader, callbacks)
        train_then_commit(trainer, tokenizer, preemption, store=store, fingerprint=fingerprint, workdir=workdir,
                          resume_dir=resume_dir, started=started, resumed_from=point[0] if point else None,
                          metrics=lambda t: {"prompts": len(prompts), **reward_summary(t.state.log_history)})
