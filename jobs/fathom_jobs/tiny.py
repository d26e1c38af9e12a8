"""A tiny random Qwen2 model with a locally trained tokenizer: the DeepSeek-R1-Distill-Qwen shape
at toy size, for tests and the CPU demo (nothing can be downloaded from a hub here).

`python -m fathom_jobs.tiny OUT_DIR` writes config, safetensors weights, tokenizer and the
R1-Distill chat template (which, like the real one, drops everything up to `</think>` in assistant
turns and opens `<think>` in the generation prompt).
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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=[USER, ASSISTANT])
    fast.chat_template = R1_DISTILL_CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a random tiny Qwen2ForCausalLM + tokenizer to out_dir (idempotent: skipped if present)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m fathom_jobs.tiny OUT_DIR")
    print(build_tiny_model(sys.argv[1]))
