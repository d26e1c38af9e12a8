"""Transformers `generate`: the CPU engine (tests, the demo, local runs) and a one-GPU fallback."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path

from . import Completion, Conversation, Sampling


class TransformersEngine:
    def __init__(self, model_dir: str | Path | None = None, *, batch_size: int = 8, device: str | None = None,
                 model=None, tokenizer=None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if model is None:
            if model_dir is None:
                raise ValueError("TransformersEngine needs a model directory or a loaded model")
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            # bf16 weights stay bf16 on a GPU; on CPUs fp32 kernels are the fast (and widely supported) ones.
            dtype = "auto" if device.startswith("cuda") else torch.float32
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device)
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)

    @classmethod
    def from_model(cls, model, tokenizer, *, batch_size: int = 8) -> TransformersEngine:
        return cls(model=model, tokenizer=tokenizer, batch_size=batch_size)

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        # The template writes BOS itself; encoding with special tokens would add a second one.
        text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        prompts = [self.prompt_ids(c) for c in conversations]
        if seeds is not None:
            # One call per conversation under its own seed: its chains do not depend on its batch.
            return [self._generate_batch([p], sampling, seed)[0] for p, seed in zip(prompts, seeds, strict=True)]
        results: list[list[Completion]] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start:start + self.batch_size]
            results += self._generate_batch(batch, sampling, sampling.seed + start)
        return results

    def _generate_batch(self, prompts: list[list[int]], sampling: Sampling, seed: int) -> list[list[Completion]]:
        import torch

        width = max(len(p) for p in prompts)
        # Left padding keeps every prompt's last token at the end, where generation continues.
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        greedy = not sampling.temperature
        options = dict(max_new_tokens=sampling.max_tokens, pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids))
        if greedy:
            options.update(do_sample=False, num_return_sequences=1)
        else:
            # top_k=0: no top-k cut, as in vLLM (transformers would default to 50).
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p or 1.0, top_k=0,
                           num_return_sequences=sampling.n)
        torch.manual_seed(seed)
        with torch.inference_mode():
            sequences = self.model.generate(input_ids=input_ids, attention_mask=attention, **options)
        generated = sequences[:, width:].tolist()
        per_prompt = 1 if greedy else sampling.n
        out: list[list[Completion]] = []
        for i in range(len(prompts)):
            rows = generated[i * per_prompt:(i + 1) * per_prompt]
            records = [self._record(row) for row in rows]
            out.append(records * sampling.n if greedy else records)  # greedy: n identical chains
        return out

    def _record(self, ids: list[int]) -> Completion:
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        if end is not None:
            body, tokens, reason = ids[:end], end + 1, "stop"
        else:
            # No end-of-sequence: generation only stops early when every chain has ended, so
            # this chain ran into the cap.
            body = [t for t in ids if t != self.pad_id]
            tokens, reason = len(body), "length"
        # Keep `<think>`/`</think>` even where a tokenizer marks them special: graders need them.
        text = self.tokenizer.decode(body, skip_special_tokens=False)
        return Completion(text=text, tokens=tokens, finish_reason=reason)

    def close(self) -> None:
        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
