"""vLLM offline inference (GPU images). `vllm` is imported here and nowhere else."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from . import Completion, Conversation, Sampling


class VllmEngine:
    def __init__(self, model_dir: str | Path, *, tensor_parallel_size: int = 1, seed: int = 0,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9, dtype: str = "auto") -> None:
        from vllm import LLM

        options = {}
        if max_model_len:
            options["max_model_len"] = max_model_len
        self.llm = LLM(model=str(model_dir), tensor_parallel_size=tensor_parallel_size, seed=seed, dtype=dtype,
                       gpu_memory_utilization=gpu_memory_utilization, **options)
        self.tokenizer = self.llm.get_tokenizer()

    def prompt(self, conversation: Conversation) -> dict:
        # Token ids, not text: vLLM would otherwise add a second BOS to the templated prompt.
        text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return {"prompt_token_ids": self.tokenizer(text, add_special_tokens=False)["input_ids"]}

    def sampling_params(self, sampling: Sampling, seed: int):
        from vllm import SamplingParams

        options = dict(n=sampling.n, max_tokens=sampling.max_tokens, seed=seed)
        if sampling.temperature is not None:
            options["temperature"] = sampling.temperature
        if sampling.top_p is not None:
            options["top_p"] = sampling.top_p
        return SamplingParams(**options)

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        if not conversations:
            return []
        prompts = [self.prompt(c) for c in conversations]
        # A seed per request makes each conversation's chains independent of the batch around it.
        seeds = list(seeds) if seeds is not None else [sampling.seed + i for i in range(len(prompts))]
        params = [self.sampling_params(sampling, seed) for seed in seeds]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            [Completion(text=o.text, tokens=len(o.token_ids),
                        finish_reason="length" if o.finish_reason == "length" else "stop")
             for o in request.outputs]
            for request in outputs
        ]

    def close(self) -> None:
        self.llm = None
