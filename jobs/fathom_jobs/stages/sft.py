"""sft: full fine-tuning on curated chains with TRL's SFTTrainer (Fathom-R1 v0.6 / v0.4 recipes).

Input: a `chains` dataset (`prompt` = system + user messages, `completion` = one assistant message
with its reasoning as `<think>...</think>` text, `position` = curriculum order) and a model.

What is trained, token by token. The R1-Distill chat template drops everything up to `</think>`
from assistant turns, so rendering prompt + completion through it would train on the final
answers without the reasoning. Each chain is therefore rendered the way the model meets it at
inference: the prompt through the template with the generation prompt (which opens `<think>`),
then the completion text verbatim (its own opening `<think>` removed, since the prompt already
holds it) and EOS. Prompt tokens get label -100; every completion token, reasoning included, is
trained.

Order. Chains keep their curriculum order (`position`); `passes: N` repeats the whole easy->hard
sequence N times. TRL's own packing (best-fit decreasing) sorts sequences by length, so packing
is done here instead: consecutive chains fill a block of up to maxLength tokens in order, and the
Trainer reads the blocks with a sequential sampler. Blocks are padding-free: TRL's collator passes
position_ids that restart at each chain and the chains' cumulative lengths (cu_seq_lens), with no
attention mask, and on GPUs FlashAttention-2's varlen kernel attends within each chain (a packed
stage on a GPU without flash-attn stops with an input error rather than fall back to a dense
maxLength x maxLength mask; `training.attention_implementation`).
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import Any

from .. import checkpoints, training
from ..datasets import read_dataset, require_columns
from ..errors import StageInputError
from ..inputs import fetch
from ..preemption import Preemption, train_then_commit
from ..specs import JobSpec, SftParams

log = logging.getLogger("fathom_jobs.sft")
THINK_OPEN = "<think>"


# ------------------------------------------------------------------------------- tokenization
def render_chain(tokenizer, prompt: list[dict[str, str]], completion: list[dict[str, str]]) -> tuple[str, str]:
    """(prompt text as the model sees it before generating, completion text it should produce)."""
    if len(completion) != 1 or completion[0].get("role") != "assistant":
        raise StageInputError("each chain's completion must be one assistant message")
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    content = completion[0]["content"]
    if prompt_text.rstrip().endswith(THINK_OPEN) and content.lstrip().startswith(THINK_OPEN):
        content = content.lstrip()[len(THINK_OPEN):].lstrip("\n")
    return prompt_text, content


def tokenize_chains(tokenizer, chains: list[tuple[list[dict[str, str]], list[dict[str, str]]]],
                    max_length: int) -> list[dict[str, Any] | None]:
    """For each (prompt, completion): input_ids and labels (-100 on the prompt) cut to max_length, and
    the uncut length; None where no completion token is left."""
    rendered = [render_chain(tokenizer, prompt, completion) for prompt, completion in chains]
    if not rendered:
        return []
    # Tokenized apart, as at inference: the prompt is encoded alone and generation continues it.
    # One call per side lets the tokenizer work through the batch on all cores.
    prompts = tokenizer([p for p, _ in rendered], add_special_tokens=False)["input_ids"]
    completions = tokenizer([c for _, c in rendered], add_special_tokens=False)["input_ids"]
    examples: list[dict[str, Any] | None] = []
    for prompt_ids, completion_ids in zip(prompts, completions, strict=True):
        completion_ids = completion_ids + [tokenizer.eos_token_id]
        length = len(prompt_ids) + len(completion_ids)
        if len(prompt_ids) >= max_length:
            examples.append(None)
            continue
        examples.append({"input_ids": (prompt_ids + completion_ids)[:max_length],
                         "labels": ([-100] * len(prompt_ids) + completion_ids)[:max_length], "length": length})
    return examples


def tokenize_chain(tokenizer, prompt: list[dict[str, str]], completion: list[dict[str, str]],
                   max_length: int) -> dict[str, Any] | None:
    return tokenize_chains(tokenizer, [(prompt, completion)], max_length)[0]


def pack_in_order(examples: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Consecutive examples into blocks of at most max_length tokens, never reordered."""
    blocks: list[dict[str, Any]] = []
    filled = max_length + 1  # forces a first block
    for example in examples:
        size = len(example["input_ids"])
        if filled + size > max_length:
            blocks.append({"input_ids": [], "labels": [], "seq_lengths": [], "ids": []})
            filled = 0
        block = blocks[-1]
        block["input_ids"] += example["input_ids"]
        block["labels"] += example["labels"]
        block["seq_lengths"].append(size)
        block["ids"].append(example["id"])
        filled += size
    return blocks


def curriculum_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in curriculum order: by `position` where the dataset has one, else as stored."""
    if rows and all(r.get("position") is not None for r in rows):
        return sorted(rows, key=lambda r: r["position"])
    return rows


def training_examples(rows: list[dict[str, Any]], tokenizer, params: SftParams) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The Trainer's rows: tokenized chains, repeated `passes` times in order, packed if asked."""
    ordered = curriculum_rows(rows)
    examples = tokenize_chains(tokenizer, [(r["prompt"], r["completion"]) for r in ordered], params.max_length)
    chains = [{**example, "id": str(row.get("id", index))}
              for index, (row, example) in enumerate(zip(ordered, examples, strict=True)) if example is not None]
    if not chains:
        raise StageInputError("no chain has a completion token within maxLength")
    sequence = chains * params.passes
    stats = {"chains": len(chains), "droppedChains": len(rows) - len(chains),
             "truncatedChains": sum(c["length"] > params.max_length for c in chains),
             "sequences": len(sequence)}
    if params.packing:
        sequence = pack_in_order(sequence, params.max_length)
        stats["packedBlocks"] = len(sequence)
    else:
        sequence = [{"input_ids": c["input_ids"], "labels": c["labels"], "ids": [c["id"]]} for c in sequence]
    return sequence, stats


# ------------------------------------------------------------------------------------ trainer
def sft_config(params: SftParams, output_dir):
    from trl import SFTConfig

    return SFTConfig(
        **training.trainer_arguments(params, output_dir),
        num_train_epochs=params.epochs,
        # Sequences arrive tokenized, cut and packed (above): TRL must not pack (it would sort by
        # length) nor truncate again; padding-free batches come from its collator.
        max_length=None,
        packing=False,
        padding_free=params.packing,
        shuffle_dataset=False,
        train_sampling_strategy="sequential",  # the curriculum order is the point
    )


def build_trainer(params: SftParams, model_dir, tokenizer, examples: list[dict[str, Any]], args, callbacks=()):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir),
                                                 **training.model_load_kwargs(params, packed=params.packing))
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                      processing_class=tokenizer, callbacks=list(callbacks))


def run(job: JobSpec) -> None:
    params = SftParams.model_validate(job.params)

    def check() -> None:  # a packed stage on a GPU without the varlen kernel stops before downloading anything
        training.attention_implementation(params.packing)

    training.run_training(job, params, train, check=check)


def train(job: JobSpec, params: SftParams, store, fingerprint: str) -> None:
    started = time.monotonic()
    workdir = training.work_dir(job)
    args = sft_config(params, workdir / "trainer")
    with args.main_process_first(local=True, desc="inputs"):
        if args.local_process_index == 0:
            shutil.rmtree(workdir, ignore_errors=True)  # leftovers of an earlier run of this attempt
        model_dir = fetch(params.model, kind="model", storage=job.storage)
        table = read_dataset(params.data, job.storage)
        point = checkpoints.resume_point(job, store, fingerprint)
        resume_dir = None
        if point is not None:
            resume_dir = workdir / "trainer" / f"checkpoint-{point[0]}"
            if args.local_process_index == 0:
                checkpoints.download_resume(point, job, workdir / "trainer")
    require_columns(table, ("prompt", "completion"), params.data)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    examples, stats = training_examples(table.to_pylist(), tokenizer, params)
    log.info("sft on %d chains x %d passes (%s)", stats["chains"], params.passes, stats)
    preemption = Preemption()
    # The preemption callback after StoreCheckpoints: it may re-enable the save that one cancels.
    callbacks = [checkpoints.StoreCheckpoints(store, params.keep_checkpoints, fingerprint), training.StoreProgress(store),
                 *training.report_callbacks(job, params, args, store, workdir), preemption.callback]
    trainer = build_trainer(params, model_dir, tokenizer, examples, args, callbacks)
    train_then_commit(trainer, tokenizer, preemption, store=store, fingerprint=fingerprint, workdir=workdir,
                      resume_dir=resume_dir, started=started, resumed_from=point[0] if point else None,
                      metrics=lambda _: {**stats, "passes": params.passes})
