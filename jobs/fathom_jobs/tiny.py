"""Tiny Qwen2 models with locally trained tokenizers: the DeepSeek-R1-Distill-Qwen shape at toy
size, for tests and the CPU demo (nothing can be downloaded from a hub here).

`build_tiny_model` writes a random one (the stage tests' fixture). `python -m fathom_jobs.tiny
OUT_DIR` writes the demo's base (`build_demo_model`): a BPE tokenizer that keeps digits apart, a Qwen2 warmed up for
about a minute on the arithmetic task of `fathom_jobs.arithmetic` until it solves some of it, and
the task's corpus and held-out benchmark in OUT_DIR/../tiny-arith. Both write config, safetensors
weights, tokenizer and the R1-Distill chat template (which, like the real one, drops everything up
to `</think>` in assistant turns and opens `<think>` in the generation prompt).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
SPECIAL_TOKENS = [BOS, EOS, PAD, USER, ASSISTANT, "<think>", "</think>"]

# The R1-Distill template without its tool-call branches.
R1_DISTILL_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '" + USER + "' + message['content'] }}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '" + ASSISTANT + "' + content + '" + EOS + "' }}"
    "{%- endif %}{%- endfor -%}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + "<think>\\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    data = Path(__file__).parent / "data"
    texts = []
    for path in sorted(data.glob("*.jsonl")):
        for line in path.read_text().split("\n"):
            if not line.strip():
                continue
            row = json.loads(line)
            texts += [str(row.get(k, "")) for k in ("problem", "question", "answer", "solution")]
    # Digits, boxes and think tags show up in every sampled chain.
    texts += ["\\boxed{" + str(n) + "}" for n in range(1000)] + ["<think>\nLet me think.\n</think>"] * 50
    return texts


def build_tokenizer(vocab_size: int = 1024):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return _trained(tok, _corpus(), vocab_size)


def _trained(tok, texts, vocab_size: int):
    """A byte-level BPE `tok` trained on `texts`, as a fast HF tokenizer with the R1-Distill chat template."""
    from tokenizers import decoders, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=[USER, ASSISTANT])
    fast.chat_template = R1_DISTILL_CHAT_TEMPLATE
    return fast


def random_qwen2(tokenizer, *, hidden_size: int, layers: int, seed: int):
    """A randomly initialised Qwen2ForCausalLM sized for `tokenizer`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_tiny_model(out_dir: str | Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a random tiny Qwen2ForCausalLM + tokenizer to out_dir (idempotent: skipped if present)."""
    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = random_qwen2(tokenizer, hidden_size=hidden_size, layers=layers, seed=seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------ the demo's model
def _demo_texts() -> list[str]:
    from .arithmetic import JUDGE_PROMPT, WARMUP_SEED, problems
    from .specs import SEED_SYSTEM_PROMPT

    rows = problems(600, WARMUP_SEED, "tok")
    texts = [SEED_SYSTEM_PROMPT] * 50 + [JUDGE_PROMPT.replace("{problem}", "")] * 50
    for r in rows:
        texts += [r["problem"], r["solution"].replace(".\n", ".\nCheck: "),
                  f"\n</think>\n\nThe final answer is $\\boxed{{{r['answer']}}}$.", f"Difficulty: {r['difficulty']}"]
    return texts


# Qwen2's own pre-tokenizer (transformers' Qwen2Tokenizer rebuilds it on load for a qwen2 config,
# whatever tokenizer.json says): digits one token each, which a small model learns arithmetic with.
QWEN2_PRETOKENIZE = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def build_demo_tokenizer(vocab_size: int = 512):
    """A BPE tokenizer trained on the demo's task and prompts, pre-tokenized as Qwen2's."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return _trained(tok, _demo_texts(), vocab_size)


def _warmup_examples(tokenizer, count: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + EOS): verbose worked chains, and difficulty ratings in the
    demo recipe's annotate prompt, so its local judge says something checkable."""
    import random

    from .arithmetic import JUDGE_PROMPT, sample
    from .specs import SEED_SYSTEM_PROMPT

    rng = random.Random(seed)
    out = []
    for index in range(count):
        item = sample(rng)
        if index % JUDGE_EVERY == 0:
            messages = [{"role": "user", "content": JUDGE_PROMPT.replace("{problem}", item.problem)}]
            completion = f"Difficulty: {item.difficulty}"
        else:
            messages = [{"role": "system", "content": SEED_SYSTEM_PROMPT}, {"role": "user", "content": item.problem}]
            chain, answer = item.worked(rng, check=CHECK_RATE, slip=SLIP_RATE)
            completion = f"{chain}\n</think>\n\nThe final answer is $\\boxed{{{answer}}}$."
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        out.append((tokenizer(prompt, add_special_tokens=False)["input_ids"],
                    tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]))
    return out


CHECK_RATE = 0.5  # verbose: about every other step is checked, which GRPO's length reward can remove
SLIP_RATE = 0.25  # a quarter of the chains slip once: what SFT on verified solutions fixes
JUDGE_EVERY = 6  # one example in six is a rating: a far easier skill than the arithmetic


def warm_up(model, tokenizer, *, steps: int, batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
            verbose: bool = True) -> None:
    """A plain next-token loop on the completions (prompts masked), constant lr after a short ramp."""
    import torch

    torch.manual_seed(seed)
    examples = _warmup_examples(tokenizer, steps * batch_size, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        batch = examples[step * batch_size:(step + 1) * batch_size]
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (p, c) in enumerate(batch):
            ids[i, :len(p) + len(c)] = torch.tensor(p + c)
            labels[i, len(p):len(p) + len(c)] = torch.tensor(c)
            mask[i, :len(p) + len(c)] = 1
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if verbose and (step % 50 == 0 or step == steps - 1):
            print(f"warm-up step {step + 1}/{steps}: loss {loss.item():.3f}", flush=True)
    model.eval()


def write_task(directory: str | Path) -> Path:
    """The demo's corpus (train.jsonl, with planted held-out copies) and benchmark (arith-heldout.jsonl)."""
    from . import arithmetic

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", arithmetic.corpus()), (f"{HELDOUT_NAME}.jsonl", arithmetic.heldout())):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


HELDOUT_NAME = "arith-heldout"
DEMO_HIDDEN, DEMO_LAYERS, DEMO_WARMUP_STEPS = 128, 2, 400


def build_demo_model(out_dir: str | Path, *, warmup_steps: int = DEMO_WARMUP_STEPS, seed: int = 0,
                     verbose: bool = False) -> Path:
    """The demo's base: the tiny Qwen2 with a digit tokenizer, warmed up on verbose worked chains
    until it solves some arithmetic problems but far from all. Its task is written beside it, in
    OUT_DIR/../tiny-arith. Idempotent: skipped if present."""
    import torch

    out = Path(out_dir)
    write_task(out.parent / "tiny-arith")
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    tokenizer = build_demo_tokenizer()
    model = random_qwen2(tokenizer, hidden_size=DEMO_HIDDEN, layers=DEMO_LAYERS, seed=seed)
    # Matrices this small gain little from threads and lose a lot when the cores are shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        warm_up(model, tokenizer, steps=warmup_steps, seed=seed, verbose=verbose)
    finally:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m fathom_jobs.tiny OUT_DIR")
    print(build_demo_model(sys.argv[1], verbose=True))
